/* NVTX ranges around every public compute call, so that an nsys timeline shows bnk's work by op, layout,
 * dtype and shape ("bnk.fwd_train NHWC f16 32x256x56x56") in the domain "bnk".
 *
 * NVTX calls are no-ops until a tool injects itself, but naming the range (formatting the shape) would
 * still cost every call. So bnk checks once, by NVTX's own rules, whether a tool can be present, and
 * formats nothing otherwise. Configure with -DBNK_NVTX=OFF to compile the ranges out entirely. */
#include <stdio.h>
#include <stdlib.h>

#include "host/internal.h"

#ifdef BNK_WITH_NVTX
#include <nvtx3/nvToolsExt.h>

enum { UNKNOWN = -1, ABSENT = 0, PRESENT = 1 };
static _Atomic int tool_state = UNKNOWN;
static nvtxDomainHandle_t domain;

/* The places NVTX itself looks for a tool (nvtxInit.h): an injection library named by the environment,
 * which is how nsys and ncu attach, or a statically linked one. */
static int tool_present(void) {
  int state = tool_state;
  if (state != UNKNOWN) return state == PRESENT;
  const char *path = getenv("NVTX_INJECTION64_PATH");
  const int present = (path != NULL && path[0] != '\0') || InitializeInjectionNvtx2_fnptr != NULL;
  if (present) domain = nvtxDomainCreateA("bnk");
  tool_state = present ? PRESENT : ABSENT;
  return present;
}

void bnk__range_push(const char *op, const bnk_tensor_desc *desc) {
  if (!tool_present()) return;
  static const char *const dtypes[] = {"f32", "f16", "bf16"};
  char name[160];
  int used = snprintf(name, sizeof name, "bnk.%s %s %s %lldx%lld", op, desc->layout == BNK_NHWC ? "NHWC" : "NCHW",
                      dtypes[desc->dtype], (long long)desc->n, (long long)desc->c);
  for (int d = 0; d < desc->spatial_dims && used > 0 && (size_t)used < sizeof name; ++d)
    used += snprintf(name + used, sizeof name - (size_t)used, "x%lld", (long long)desc->spatial[d]);
  nvtxEventAttributes_t attributes = {0};
  attributes.version = NVTX_VERSION;
  attributes.size = NVTX_EVENT_ATTRIB_STRUCT_SIZE;
  attributes.messageType = NVTX_MESSAGE_TYPE_ASCII;
  attributes.message.ascii = name;
  nvtxDomainRangePushEx(domain, &attributes);
}

void bnk__range_pop(void) {
  if (tool_present()) nvtxDomainRangePop(domain);
}
#else
void bnk__range_push(const char *op, const bnk_tensor_desc *desc) {
  (void)op;
  (void)desc;
}

void bnk__range_pop(void) {}
#endif

void bnk__range_push_rows(const char *op, int64_t rows, int64_t columns) {
  const bnk_tensor_desc shape = {BNK_FLOAT32, BNK_NCHW, 0, rows, columns, {1, 1, 1}};
  bnk__range_push(op, &shape);
}
