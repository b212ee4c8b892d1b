/* The ops and the implementations that run them: their names (as --op and --impl spell them) and which
 * implementation has which op. */
#include "benchmarks/bench.h"

const char *const op_names[OP_COUNT] = {
    "fwd_train",          "fwd_infer",          "bwd",          "bwd_infer",   "fwd_infer_relu",
    "fwd_infer_add_relu", "fwd_train_add_relu", "bwd_add_relu", "scale_shift", "linear_bn"};

/* The four batch-normalization ops that bnk is compared with other libraries on. */
static int is_plain_op(bench_op op) { return op <= OP_BWD_INFER; }
/* The forward ops whose output goes through a ReLU, and those of them that add the residual z first. */
int has_relu(bench_op op) {
  return op == OP_FWD_INFER_RELU || op == OP_FWD_INFER_ADD_RELU || op == OP_FWD_TRAIN_ADD_RELU;
}
int adds_residual(bench_op op) {
  return op == OP_FWD_INFER_ADD_RELU || op == OP_FWD_TRAIN_ADD_RELU || op == OP_BWD_ADD_RELU;
}
/* Ops on batch statistics, which need more than one value per channel. */
int trains(bench_op op) {
  return op == OP_FWD_TRAIN || op == OP_BWD || op == OP_FWD_TRAIN_ADD_RELU || op == OP_BWD_ADD_RELU;
}

const char *const impl_names[IMPL_COUNT] = {
    "bnk",          "bnk-persistent", "bnk-two-pass", "cudnn",    "cudnn-persistent", "cudnn-persistent-ex",
    "cublas",       "naive",          "bnk-fused",    "bnk-mask", "bnk-from-y",       "bnk-scale-shift",
    "bnk+separate", "bnk-fwd-infer"};

/* Whether the implementation has the op at all; only these pairs get a row. bnk's two training paths, each
 * forced, time the training forward and the backward (which takes the same context setting). cuDNN has no
 * frozen-statistics backward, its persistent mode exists for training and its backward only, and inference has no
 * reduction for cuBLAS to do. The epilogue ops compare bnk with itself. */
int impl_has_op(bench_impl impl, bench_op op) {
  switch (impl) {
  case IMPL_BNK:
  case IMPL_NAIVE:
    return is_plain_op(op);
  case IMPL_BNK_PERSISTENT:
  case IMPL_BNK_TWO_PASS:
    return op == OP_FWD_TRAIN || op == OP_BWD;
  case IMPL_CUDNN:
    return op == OP_FWD_TRAIN || op == OP_FWD_INFER || op == OP_BWD;
  case IMPL_CUDNN_PERSISTENT:
  case IMPL_CUDNN_PERSISTENT_EX:
    return op == OP_FWD_TRAIN || op == OP_BWD;
  case IMPL_CUBLAS:
    return op == OP_FWD_TRAIN || op == OP_BWD || op == OP_BWD_INFER;
  case IMPL_BNK_FUSED:
    return has_relu(op) || op == OP_LINEAR_BN;
  case IMPL_BNK_MASK:
  case IMPL_BNK_FROM_Y:
    return op == OP_BWD_ADD_RELU;
  case IMPL_BNK_SCALE_SHIFT:
  case IMPL_BNK_FWD_INFER:
    return op == OP_SCALE_SHIFT;
  case IMPL_BNK_SEPARATE:
    return has_relu(op) || op == OP_BWD_ADD_RELU || op == OP_LINEAR_BN;
  case IMPL_COUNT:
    break;
  }
  return 0;
}

/* The row an epilogue op's variants are compared with (bytes and speed): the sequence the fused form
 * replaces. IMPL_COUNT for the plain ops. */
bench_impl unfused_impl(bench_op op) {
  if (op == OP_SCALE_SHIFT) return IMPL_BNK_FWD_INFER;
  return is_plain_op(op) ? IMPL_COUNT : IMPL_BNK_SEPARATE;
}

int is_cudnn(bench_impl impl) {
  return impl == IMPL_CUDNN || impl == IMPL_CUDNN_PERSISTENT || impl == IMPL_CUDNN_PERSISTENT_EX;
}
/* bnk in any form decides the exit status; the other libraries and the naive baseline never do. */
int is_bnk(bench_impl impl) { return !is_cudnn(impl) && impl != IMPL_CUBLAS && impl != IMPL_NAIVE; }
