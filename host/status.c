#include <stdarg.h>
#include <stdio.h>

#include "host/internal.h"

static _Thread_local char last_message[512];

const char *bnk_status_name(bnk_status status) {
  switch (status) {
#define BNK_STATUS_NAME_CASE_(name, value, message) \
  case name:                                        \
    return #name;
    BNK_STATUS_LIST(BNK_STATUS_NAME_CASE_)
#undef BNK_STATUS_NAME_CASE_
  }
  return "BNK_STATUS_UNKNOWN";
}

const char *bnk_status_string(bnk_status status) {
  switch (status) {
#define BNK_STATUS_MESSAGE_CASE_(name, value, message) \
  case name:                                           \
    return message;
    BNK_STATUS_LIST(BNK_STATUS_MESSAGE_CASE_)
#undef BNK_STATUS_MESSAGE_CASE_
  }
  return "unknown status";
}

const char *bnk_last_error_message(void) { return last_message; }

unsigned bnk_version(void) { return BNK_VERSION_NUMBER; }

const char *bnk_version_string(void) { return BNK_VERSION_STRING; }

void bnk__clear_error(void) { last_message[0] = '\0'; }

bnk_status bnk__fail(bnk_status status, const char *format, ...) {
  va_list args;
  va_start(args, format);
  /* NOLINTNEXTLINE(clang-analyzer-valist.Uninitialized): a false positive of clang 14 (va_start is above) */
  vsnprintf(last_message, sizeof last_message, format, args);
  va_end(args);
  return status;
}

bnk_status bnk__check_cuda(cudaError_t error, const char *what) {
  if (error == cudaSuccess) return BNK_SUCCESS;
  return bnk__fail(BNK_ERROR_CUDA, "%s: %s: %s", what, cudaGetErrorName(error), cudaGetErrorString(error));
}
