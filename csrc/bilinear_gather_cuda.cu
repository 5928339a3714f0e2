#include "bilinear_gather.h"
#include "cuda_launch.h"

namespace infinidepth {
namespace {

// One thread per (query, channel), channel fastest: reads of a tap and writes of a query are coalesced.
__global__ void bilinear_gather_kernel(const float* __restrict__ feat, const float* __restrict__ coords,
                                       float* __restrict__ out, int64_t H, int64_t W, int64_t C, int64_t N,
                                       int64_t total) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const int64_t c = i % C;
  const int64_t q = i / C;
  const int64_t b = q / N;
  const BilinearTaps t = bilinear_taps(coords[2 * q], coords[2 * q + 1], H, W);
  const float* base = feat + b * H * W * C + c;
  float sum = 0.f;
#pragma unroll
  for (int k = 0; k < 4; ++k) sum += t.weight[k] * (t.index[k] < 0 ? 0.f : __ldg(base + t.index[k] * C));
  out[i] = sum;
}

}  // namespace

void bilinear_gather_cuda(const float* feat, const float* coords, float* out, int64_t B, int64_t H, int64_t W,
                          int64_t C, int64_t N, void* stream) {
  const int64_t total = B * N * C;
  if (total == 0) return;
  const int threads = 256;
  const int64_t blocks = (total + threads - 1) / threads;
  LAUNCH(bilinear_gather_kernel, static_cast<unsigned int>(blocks), threads, 0, static_cast<cudaStream_t>(stream))(
      feat, coords, out, H, W, C, N, total);
}

}  // namespace infinidepth
