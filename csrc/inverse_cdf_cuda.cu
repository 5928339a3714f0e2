// CUDA inverse-CDF sampler: CUB's device-wide inclusive scan of the integer weights (exact in
// int64), then one thread per sample binary-searching the CDF (balanced however the samples bunch
// up; the CDF of a megapixel grid sits in L2). Per image, both on the caller's stream: no host
// round trip between them.
#include <cub/device/device_scan.cuh>
#include <cuda_runtime.h>

#include "inverse_cdf.h"

namespace infinidepth {
namespace {

constexpr int kThreads = 256;

__global__ void place_samples(const int64_t* __restrict__ cdf, const int64_t* __restrict__ order, int64_t M,
                              int64_t H, int64_t W, int64_t n, int64_t image, uint32_t stream, bool jitter, float* __restrict__ coords,
                              int64_t* __restrict__ cells) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= n) return;
  const int64_t total = cdf[M - 1];
  write_sample(upper_bound_index(cdf, M, sample_target(j, total, n)), order, j, image, n, H, W, stream, jitter, coords,
               cells);
}

}  // namespace

size_t inverse_cdf_scan_bytes(int64_t M) {
  size_t bytes = 0;
  cub::DeviceScan::InclusiveSum(nullptr, bytes, static_cast<const int64_t*>(nullptr), static_cast<int64_t*>(nullptr), M);
  return bytes;
}

void inverse_cdf_sample_cuda(const int64_t* weights, const int64_t* order, int64_t B, int64_t H, int64_t W, int64_t n,
                             uint32_t seed, bool jitter, int64_t* cdf, void* scratch, size_t scratch_bytes,
                             float* coords, int64_t* cells, void* stream) {
  const int64_t M = H * W;
  auto s = static_cast<cudaStream_t>(stream);
  const unsigned blocks = static_cast<unsigned>((n + kThreads - 1) / kThreads);
  for (int64_t b = 0; b < B; ++b) {
    size_t bytes = scratch_bytes;
    cub::DeviceScan::InclusiveSum(scratch, bytes, weights + b * M, cdf, M, s);
    place_samples<<<blocks, kThreads, 0, s>>>(cdf, order, M, H, W, n, b, jitter_stream(seed, static_cast<uint32_t>(b)),
                                              jitter, coords, cells);
  }
}

}  // namespace infinidepth
