/* A minimal NVTX tool, loaded the way nsys is (NVTX_INJECTION64_PATH): it records the ranges that bnk
 * pushes and pops, so the tests can check their names. */
#include <string.h>

#include <nvtx3/nvToolsExt.h>

#define RECORDER_API __attribute__((visibility("default")))

enum { MAX_RANGES = 64 };
static char names[MAX_RANGES][200];
static int pushes, pops;

static int record_push(nvtxDomainHandle_t domain, const nvtxEventAttributes_t *attributes) {
  (void)domain;
  if (pushes < MAX_RANGES && attributes->messageType == NVTX_MESSAGE_TYPE_ASCII) {
    strncpy(names[pushes], attributes->message.ascii, sizeof names[0] - 1);
  }
  return ++pushes - pops;
}

static int record_pop(nvtxDomainHandle_t domain) {
  (void)domain;
  ++pops;
  return pushes - pops;
}

RECORDER_API int InitializeInjectionNvtx2(NvtxGetExportTableFunc_t get_export_table) {
  const NvtxExportTableCallbacks *callbacks = (const NvtxExportTableCallbacks *)get_export_table(NVTX_ETID_CALLBACKS);
  NvtxFunctionTable table = NULL;
  unsigned size = 0;
  if (callbacks == NULL || !callbacks->GetModuleFunctionTable(NVTX_CB_MODULE_CORE2, &table, &size)) return 0;
  *table[NVTX_CBID_CORE2_DomainRangePushEx] = (NvtxFunctionPointer)record_push;
  *table[NVTX_CBID_CORE2_DomainRangePop] = (NvtxFunctionPointer)record_pop;
  return 1;
}

RECORDER_API int nvtx_recorder_pushes(void) { return pushes; }
RECORDER_API int nvtx_recorder_pops(void) { return pops; }
RECORDER_API const char *nvtx_recorder_name(int index) { return index < MAX_RANGES ? names[index] : ""; }
