/* Links against the installed library and calls it: no device is needed for these. */
#include <stdio.h>
#include <string.h>

#include <bnk.h>

int main(void) {
  if (bnk_version() != BNK_VERSION_NUMBER) return 1;
  if (strcmp(bnk_status_name(BNK_ERROR_NCCL), "BNK_ERROR_NCCL") != 0) return 1;
  printf("bnk %s\n", bnk_version_string());
  return 0;
}
