// Multi-channel bilinear gather: the building block of every implicit decoder.
//
// Convention (the one used everywhere in infinidepth, identical to
// torch.nn.functional.grid_sample with align_corners=False and zero padding):
//   a query is a normalised (y, x) in [-1, 1]; pixel centres sit at (i + 0.5) / H * 2 - 1;
//   the sample location in pixels is ((y + 1) * H - 1) / 2, and taps outside the map read 0.
//
// Layouts: feat is channels-last [B, H, W, C]; coords is [B, N, 2] holding (y, x); out is [B, N, C].
// This header has no torch or CUDA includes so that .cu files stay cheap to compile.
#pragma once
#include <cmath>
#include <cstdint>

namespace infinidepth {

// Bilinear weights and the four taps of one query; a tap outside the map gets weight 0 and index 0.
struct BilinearTaps {
  int64_t index[4];
  float weight[4];
};

#if defined(__CUDACC__)
#define INFINIDEPTH_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define INFINIDEPTH_HOST_DEVICE inline
#endif

INFINIDEPTH_HOST_DEVICE BilinearTaps bilinear_taps(float y, float x, int64_t H, int64_t W) {
  // Clamping far-away queries to one pixel outside the map changes nothing (all taps read 0 there)
  // and keeps the integer conversion below defined for any finite coordinate.
  const float py = fminf(fmaxf(((y + 1.f) * static_cast<float>(H) - 1.f) * 0.5f, -2.f), static_cast<float>(H) + 1.f);
  const float px = fminf(fmaxf(((x + 1.f) * static_cast<float>(W) - 1.f) * 0.5f, -2.f), static_cast<float>(W) + 1.f);
  const float fy = floorf(py);
  const float fx = floorf(px);
  const float wy1 = py - fy, wx1 = px - fx;
  const float wy0 = 1.f - wy1, wx0 = 1.f - wx1;
  const int64_t y0 = static_cast<int64_t>(fy), x0 = static_cast<int64_t>(fx);
  BilinearTaps t;
  const int64_t ys[2] = {y0, y0 + 1};
  const int64_t xs[2] = {x0, x0 + 1};
  const float wys[2] = {wy0, wy1};
  const float wxs[2] = {wx0, wx1};
  for (int a = 0; a < 2; ++a) {
    for (int b = 0; b < 2; ++b) {
      const bool inside = ys[a] >= 0 && ys[a] < H && xs[b] >= 0 && xs[b] < W;
      t.index[a * 2 + b] = inside ? ys[a] * W + xs[b] : 0;
      t.weight[a * 2 + b] = inside ? wys[a] * wxs[b] : 0.f;
    }
  }
  return t;
}

// CPU kernel (multi-threaded over queries).
void bilinear_gather_cpu(const float* feat, const float* coords, float* out, int64_t B, int64_t H, int64_t W,
                         int64_t C, int64_t N);

// CUDA launcher; stream is a cudaStream_t passed as void* to keep this header free of CUDA types.
void bilinear_gather_cuda(const float* feat, const float* coords, float* out, int64_t B, int64_t H, int64_t W,
                          int64_t C, int64_t N, void* stream);

}  // namespace infinidepth
