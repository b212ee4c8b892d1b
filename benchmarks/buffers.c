/* Errors and buffers: every failure of a bnk or CUDA call ends the program with the call and the reason; the
 * host and device allocations, uploads and downloads every other file uses. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "benchmarks/bench.h"

void die(const char *format, ...) {
  va_list args;
  va_start(args, format);
  fprintf(stderr, PROGRAM ": ");
  vfprintf(stderr, format, args);
  fprintf(stderr, "\n");
  va_end(args);
  exit(EXIT_FAILURE);
}

void check_bnk(bnk_status status, const char *call) {
  if (status == BNK_SUCCESS) return;
  die("%s failed: %s: %s", call, bnk_status_name(status), bnk_last_error_message());
}

void check_cuda(cudaError_t error, const char *call) {
  if (error == cudaSuccess) return;
  die("%s failed: %s: %s", call, cudaGetErrorName(error), cudaGetErrorString(error));
}

void *host_alloc(size_t bytes) {
  void *pointer = malloc(bytes > 0 ? bytes : 1);
  if (pointer == NULL) die("out of host memory allocating %zu bytes", bytes);
  return pointer;
}

/* Zeroed float64 arrays: per-channel scratch that loops fill, which the compiler then need not suspect of
 * being read before it is written. */
double *host_zeros(int64_t count) {
  double *pointer = calloc(count > 0 ? (size_t)count : 1, sizeof(double));
  if (pointer == NULL) die("out of host memory allocating %" PRId64 " doubles", count);
  return pointer;
}

void *device_alloc(size_t bytes) {
  void *pointer = NULL;
  if (bytes == 0) return NULL;
  check_cuda(cudaMalloc(&pointer, bytes), "cudaMalloc");
  return pointer;
}

void device_free(void *pointer) {
  if (pointer != NULL) check_cuda(cudaFree(pointer), "cudaFree");
}

/* Every output is overwritten with all-ones bits (NaN in every float type) before the run that is
 * validated, so that a kernel that skips an element cannot pass on a previous op's result. */
void device_poison(void *pointer, size_t bytes) {
  if (bytes > 0) check_cuda(cudaMemset(pointer, 0xff, bytes), "cudaMemset");
}

void upload(void *device, const void *host, size_t bytes) {
  if (bytes > 0) check_cuda(cudaMemcpy(device, host, bytes, cudaMemcpyHostToDevice), "cudaMemcpy to the device");
}

void download(void *host, const void *device, size_t bytes) {
  check_cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  if (bytes > 0) check_cuda(cudaMemcpy(host, device, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy to the host");
}

void download_floats(double *host, const float *device, int64_t count) {
  float *floats = host_alloc((size_t)count * sizeof(float));
  download(floats, device, (size_t)count * sizeof(float));
  for (int64_t i = 0; i < count; ++i) host[i] = floats[i];
  free(floats);
}
