/* Criterion's runner, with one addition: the GPU build of a suite exits with 77 (CTest's "skipped")
 * when there is no CUDA device, so a machine without one reports the suite as skipped, not passed. */
#include <stdio.h>

#include <criterion/criterion.h>
#include <cuda_runtime_api.h>

/* Criterion's sandbox finds main by its symbol to start test workers: it must stay visible, or every
 * worker re-runs the whole suite and Criterion bails out reporting nothing. */
__attribute__((visibility("default"))) int main(int argc, char *argv[]) {
#ifndef BNK_TEST_EMULATION
  int devices = 0;
  const cudaError_t error = cudaGetDeviceCount(&devices);
  if (error != cudaSuccess || devices == 0) {
    printf("SKIPPED: no CUDA device (%s); this suite ran on the host emulation instead\n",
           error != cudaSuccess ? cudaGetErrorString(error) : "0 devices");
    return 77;
  }
#endif
  struct criterion_test_set *tests = criterion_initialize();
  int result = 0;
  if (criterion_handle_args(argc, argv, true)) result = !criterion_run_all_tests(tests);
  criterion_finalize(tests);
  return result;
}
