/* Host entry points of tests/emu/memcheck_kernels.cu: kernels with planted memory bugs, for emu_memcheck. */
#ifndef BNK_EMU_MEMCHECK_KERNELS_H
#define BNK_EMU_MEMCHECK_KERNELS_H

#include <cuda_runtime_api.h>

/* The source lines of the planted accesses in memcheck_kernels.cu. */
extern const int memcheck_read_line, memcheck_write_line, memcheck_shared_line;

/* The last thread of a block of `threads` reads p[index] into out[0]; the others read p[their index]. */
cudaError_t memcheck_read(const float *p, long index, float *out, int threads);
/* The last thread writes p[index] = 1; the others write their own element. */
cudaError_t memcheck_write(float *p, long index, int threads);
/* Every thread reads one float4 of p (n floats, n a multiple of 4) and writes it to q: in bounds. */
cudaError_t memcheck_copy4(const float *p, float *q, int n);
/* One block of 64 threads with `smem` bytes of dynamic shared memory; the last thread writes the byte at
 * `offset` of it (the others write their own byte). */
cudaError_t memcheck_dynamic_shared(size_t smem, size_t offset);
/* `blocks` blocks of 64 threads: each thread stores its static __shared__ float (never written) to
 * out[block * 64 + thread], then writes it, so that a later block on the same worker would see it. */
cudaError_t memcheck_static_shared(float *out, int blocks);

#endif
