// INFINIDEPTH_HOST_DEVICE: inline on the host, and also on the device when compiled by nvcc, for
// the small helpers that the CPU and CUDA kernels share.
#pragma once

#if defined(__CUDACC__)
#define INFINIDEPTH_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define INFINIDEPTH_HOST_DEVICE inline
#endif
