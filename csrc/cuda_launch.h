// The CUDA runtime as the .cu files here use it: the real one under nvcc, or, compiled as C++ with
// INFINIDEPTH_CUDA_EMULATION, the host emulation of csrc/tests/cuda_emulation.h (CI's tests run the
// kernels that way). LAUNCH(kernel, grid, block, shared_bytes, stream)(args...) is
// kernel<<<grid, block, shared_bytes, stream>>>(args...); dynamic_shared_memory() is the block's
// dynamic shared memory.
#pragma once

#ifdef INFINIDEPTH_CUDA_EMULATION
#include "tests/cuda_emulation.h"
#define LAUNCH(kernel, grid, block, shared_bytes, stream) cuda_emulation::Launch(kernel, grid, block, shared_bytes, stream)
#else
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>
#define LAUNCH(kernel, grid, block, shared_bytes, stream) kernel<<<grid, block, shared_bytes, stream>>>

__device__ __forceinline__ unsigned char* dynamic_shared_memory() {
  extern __shared__ __align__(16) unsigned char raw[];
  return raw;
}
#endif
