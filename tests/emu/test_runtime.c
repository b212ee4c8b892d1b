/* The emulated runtime from plain C: the real cuda_runtime_api.h, linked
 * against bnk_cuda_emu instead of libcudart. */
#include <bnk_emu/control.h>
#include <criterion/criterion.h>
#include <cuda_runtime_api.h>

#include <string.h>

static void not_a_kernel(void) {}

Test(runtime, device_queries) {
  int n = 0, dev = -1, v = 0;
  cr_assert_eq(cudaGetDeviceCount(&n), cudaSuccess);
  cr_assert_eq(n, 1);
  cr_assert_eq(cudaGetDevice(&dev), cudaSuccess);
  cr_assert_eq(dev, 0);
  cr_assert_eq(cudaSetDevice(0), cudaSuccess);
  cr_assert_eq(cudaSetDevice(1), cudaErrorInvalidDevice);
  cr_assert_eq(cudaGetLastError(), cudaErrorInvalidDevice);
  struct {
    enum cudaDeviceAttr attr;
    int value;
  } expect[] = {
      {cudaDevAttrMultiProcessorCount, 132},
      {cudaDevAttrComputeCapabilityMajor, 9},
      {cudaDevAttrComputeCapabilityMinor, 0},
      {cudaDevAttrMaxThreadsPerBlock, 1024},
      {cudaDevAttrMaxThreadsPerMultiProcessor, 2048},
      {cudaDevAttrMaxBlocksPerMultiprocessor, 32},
      {cudaDevAttrMaxRegistersPerBlock, 65536},
      {cudaDevAttrMaxRegistersPerMultiprocessor, 65536},
      {cudaDevAttrMaxSharedMemoryPerBlock, 49152},
      {cudaDevAttrMaxSharedMemoryPerBlockOptin, 232448},
      {cudaDevAttrMaxSharedMemoryPerMultiprocessor, 233472},
      {cudaDevAttrL2CacheSize, 50 * 1024 * 1024},
      {cudaDevAttrMaxGridDimX, 2147483647},
      {cudaDevAttrMaxGridDimY, 65535},
      {cudaDevAttrMaxGridDimZ, 65535},
      {cudaDevAttrMaxBlockDimX, 1024},
      {cudaDevAttrMaxBlockDimY, 1024},
      {cudaDevAttrMaxBlockDimZ, 64},
      {cudaDevAttrWarpSize, 32},
  };
  for (size_t i = 0; i < sizeof expect / sizeof expect[0]; ++i) {
    cr_assert_eq(cudaDeviceGetAttribute(&v, expect[i].attr, 0), cudaSuccess);
    cr_assert_eq(v, expect[i].value, "attribute %d: %d", (int)expect[i].attr, v);
  }
  cr_assert_eq(cudaDeviceGetAttribute(&v, cudaDevAttrWarpSize, 1), cudaErrorInvalidDevice);
  struct cudaDeviceProp prop;
  cr_assert_eq(cudaGetDeviceProperties(&prop, 0), cudaSuccess);
  cr_assert_eq(prop.multiProcessorCount, 132);
  cr_assert_eq(prop.sharedMemPerBlockOptin, 232448u);
  cr_assert_eq(cudaDriverGetVersion(&v), cudaSuccess);
  cr_assert_geq(v, 12000);
  cr_assert_eq(cudaRuntimeGetVersion(&v), cudaSuccess);
  cr_assert_eq(v, CUDART_VERSION);
  (void)cudaGetLastError();
}

Test(runtime, memory) {
  int *d = NULL, *h = NULL;
  cr_assert_eq(cudaMalloc((void **)&d, 1000 * sizeof(int)), cudaSuccess);
  cr_assert_not_null(d);
  cr_assert_eq((unsigned long)(size_t)d % 256, 0ul);
  cr_assert_eq(cudaMallocHost((void **)&h, 1000 * sizeof(int)), cudaSuccess);
  for (int i = 0; i < 1000; ++i) h[i] = i;
  cr_assert_eq(cudaMemcpy(d, h, 1000 * sizeof(int), cudaMemcpyHostToDevice), cudaSuccess);
  cr_assert_eq(cudaMemset(d + 10, 0, 5 * sizeof(int)), cudaSuccess);
  cr_assert_eq(cudaMemsetAsync(d + 20, 0xff, sizeof(int), 0), cudaSuccess);
  memset(h, 0, 1000 * sizeof(int));
  cr_assert_eq(cudaMemcpyAsync(h, d, 1000 * sizeof(int), cudaMemcpyDeviceToHost, 0), cudaSuccess);
  cr_assert_eq(cudaStreamSynchronize(0), cudaSuccess);
  for (int i = 0; i < 1000; ++i) {
    int expect = (i >= 10 && i < 15) ? 0 : (i == 20 ? -1 : i);
    cr_assert_eq(h[i], expect, "h[%d] = %d", i, h[i]);
  }
  cr_assert_eq(cudaMemcpy(d, h, 4, (enum cudaMemcpyKind)17), cudaErrorInvalidMemcpyDirection);
  cr_assert_eq(cudaGetLastError(), cudaErrorInvalidMemcpyDirection);
  cr_assert_eq(cudaMemcpy(d, d + 1, 8, cudaMemcpyDefault), cudaSuccess, "device to device, overlapping");
  size_t free_b = 0, total_b = 0;
  cr_assert_eq(cudaMemGetInfo(&free_b, &total_b), cudaSuccess);
  cr_assert_lt(free_b, total_b);
  cr_assert_eq(cudaFree(d), cudaSuccess);
  cr_assert_eq(cudaFree(d), cudaErrorInvalidValue, "double free is reported");
  cr_assert_eq(cudaFree(NULL), cudaSuccess);
  cr_assert_eq(cudaFreeHost(h), cudaSuccess);
  void *z = (void *)1;
  cr_assert_eq(cudaMalloc(&z, 0), cudaSuccess);
  cr_assert_null(z);
  cr_assert_eq(cudaMalloc(NULL, 4), cudaErrorInvalidValue);
  (void)cudaGetLastError();
}

Test(runtime, streams_and_events) {
  cudaStream_t s1, s2;
  cudaEvent_t a, b, notime;
  float ms = -1.0f;
  cr_assert_eq(cudaStreamCreate(&s1), cudaSuccess);
  cr_assert_eq(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking), cudaSuccess);
  cr_assert_eq(cudaStreamQuery(s1), cudaSuccess);
  cr_assert_eq(cudaEventCreate(&a), cudaSuccess);
  cr_assert_eq(cudaEventCreateWithFlags(&b, cudaEventDefault), cudaSuccess);
  cr_assert_eq(cudaEventCreateWithFlags(&notime, cudaEventDisableTiming), cudaSuccess);
  cr_assert_eq(cudaEventElapsedTime(&ms, a, b), cudaErrorInvalidResourceHandle, "not recorded yet");
  cr_assert_eq(cudaEventRecord(a, s1), cudaSuccess);
  volatile double x = 0;
  for (int i = 0; i < 200000; ++i) x = x + 1.0;
  cr_assert_eq(cudaEventRecord(b, s2), cudaSuccess);
  cr_assert_eq(cudaEventSynchronize(b), cudaSuccess);
  cr_assert_eq(cudaEventElapsedTime(&ms, a, b), cudaSuccess);
  cr_assert_gt(ms, 0.0f);
  cr_assert_lt(ms, 10000.0f);
  cr_assert_eq(cudaEventRecord(notime, s1), cudaSuccess);
  cr_assert_eq(cudaEventElapsedTime(&ms, a, notime), cudaErrorInvalidResourceHandle);
  cr_assert_eq(cudaStreamWaitEvent(s2, a, 0), cudaSuccess);
  cr_assert_eq(cudaStreamSynchronize(s1), cudaSuccess);
  cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);
  cr_assert_eq(cudaEventDestroy(a), cudaSuccess);
  cr_assert_eq(cudaEventDestroy(b), cudaSuccess);
  cr_assert_eq(cudaEventDestroy(notime), cudaSuccess);
  cr_assert_eq(cudaStreamDestroy(s1), cudaSuccess);
  cr_assert_eq(cudaStreamDestroy(s2), cudaSuccess);
  cr_assert_eq(cudaStreamSynchronize(s1), cudaErrorInvalidResourceHandle);
  cr_assert_eq(cudaStreamDestroy(s1), cudaErrorInvalidResourceHandle);
  (void)cudaGetLastError();
}

Test(runtime, errors) {
  cr_assert_eq(cudaGetLastError(), cudaSuccess);
  cr_assert_eq(cudaPeekAtLastError(), cudaSuccess);
  cr_assert_str_eq(cudaGetErrorName(cudaErrorInvalidConfiguration), "cudaErrorInvalidConfiguration");
  cr_assert_str_eq(cudaGetErrorString(cudaErrorInvalidConfiguration), "invalid configuration argument");
  cr_assert_str_eq(cudaGetErrorName(cudaErrorLaunchFailure), "cudaErrorLaunchFailure");
  cr_assert_str_eq(cudaGetErrorString(cudaErrorLaunchFailure), "unspecified launch failure");
  cr_assert_str_eq(cudaGetErrorName(cudaSuccess), "cudaSuccess");
  cr_assert_str_eq(cudaGetErrorString(cudaErrorInvalidValue), "invalid argument");
}

Test(runtime, kernel_attributes_and_occupancy) {
  const void *f = (const void *)(size_t)&not_a_kernel;
  int blocks = -1;
  cr_assert_eq(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, f, 256, 0), cudaSuccess);
  cr_assert_eq(blocks, 8);
  cr_assert_eq(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, f, 1024, 0), cudaSuccess);
  cr_assert_eq(blocks, 2);
  cr_assert_eq(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, f, 32, 0), cudaSuccess);
  cr_assert_eq(blocks, 32);
  cr_assert_eq(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, f, 128, 40000), cudaSuccess);
  cr_assert_eq(blocks, 5);
  cr_assert_eq(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, f, 128, 60000), cudaSuccess);
  cr_assert_eq(blocks, 0, "above the kernel's dynamic shared memory limit");
  cr_assert_eq(cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, 100000), cudaSuccess);
  cr_assert_eq(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, f, 128, 100000), cudaSuccess);
  cr_assert_eq(blocks, 2);
  struct cudaFuncAttributes fa;
  cr_assert_eq(cudaFuncGetAttributes(&fa, f), cudaSuccess);
  cr_assert_eq(fa.maxThreadsPerBlock, 1024);
  cr_assert_eq(fa.maxDynamicSharedSizeBytes, 100000);
  cr_assert_eq(cudaFuncSetAttribute(NULL, cudaFuncAttributeMaxDynamicSharedMemorySize, 1),
               cudaErrorInvalidDeviceFunction);
  (void)cudaGetLastError();
}

Test(runtime, control_api_from_c) {
  unsigned long long seed = 0;
  bnk_emu_set_schedule(BNK_EMU_RANDOM, 9);
  cr_assert_eq(bnk_emu_get_schedule(&seed), BNK_EMU_RANDOM);
  cr_assert_eq(seed, 9ull);
  bnk_emu_set_workers(2);
  cr_assert_eq(bnk_emu_get_workers(), 2);
  cr_assert_str_empty(bnk_emu_last_diagnostic());
  bnk_emu_clear_diagnostic();
}
