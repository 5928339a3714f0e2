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

#include "host_device.h"

namespace infinidepth {

// Bilinear weights of the four taps of one query, and their derivatives with respect to the
// normalised query (y, x): the exact tangent of the bilinear sample, one-sided at cell borders as in
// grid_sample's backward. A tap outside the map gets weight 0, derivatives 0 and index -1: its
// consumer reads 0 there, never a cell of the map (0 * a NaN or infinite cell is NaN, where zero
// padding, like grid_sample, gives 0).
struct BilinearTapsGrad {
  int64_t index[4];
  float weight[4];
  float dy[4];
  float dx[4];
};

INFINIDEPTH_HOST_DEVICE BilinearTapsGrad bilinear_taps_grad(float y, float x, int64_t H, int64_t W) {
  // Clamping far-away queries to one pixel outside the map changes nothing (all taps read 0 there)
  // and keeps the integer conversion below defined for any finite coordinate.
  const float py = fminf(fmaxf(((y + 1.f) * static_cast<float>(H) - 1.f) * 0.5f, -2.f), static_cast<float>(H) + 1.f);
  const float px = fminf(fmaxf(((x + 1.f) * static_cast<float>(W) - 1.f) * 0.5f, -2.f), static_cast<float>(W) + 1.f);
  const float fy = floorf(py);
  const float fx = floorf(px);
  const float wy1 = py - fy, wx1 = px - fx;
  const float wy0 = 1.f - wy1, wx0 = 1.f - wx1;
  const int64_t y0 = static_cast<int64_t>(fy), x0 = static_cast<int64_t>(fx);
  const float sy = 0.5f * static_cast<float>(H), sx = 0.5f * static_cast<float>(W);  // d pixel / d normalised
  BilinearTapsGrad t;
  const int64_t ys[2] = {y0, y0 + 1};
  const int64_t xs[2] = {x0, x0 + 1};
  const float wys[2] = {wy0, wy1};
  const float wxs[2] = {wx0, wx1};
  const float dys[2] = {-sy, sy};
  const float dxs[2] = {-sx, sx};
  for (int a = 0; a < 2; ++a) {
    for (int b = 0; b < 2; ++b) {
      const bool inside = ys[a] >= 0 && ys[a] < H && xs[b] >= 0 && xs[b] < W;
      const int i = a * 2 + b;
      t.index[i] = inside ? ys[a] * W + xs[b] : -1;
      t.weight[i] = inside ? wys[a] * wxs[b] : 0.f;
      t.dy[i] = inside ? dys[a] * wxs[b] : 0.f;
      t.dx[i] = inside ? wys[a] * dxs[b] : 0.f;
    }
  }
  return t;
}

// The same without derivatives (the compiler drops their arithmetic).
struct BilinearTaps {
  int64_t index[4];
  float weight[4];
};

INFINIDEPTH_HOST_DEVICE BilinearTaps bilinear_taps(float y, float x, int64_t H, int64_t W) {
  const BilinearTapsGrad g = bilinear_taps_grad(y, x, H, W);
  BilinearTaps t;
  for (int i = 0; i < 4; ++i) {
    t.index[i] = g.index[i];
    t.weight[i] = g.weight[i];
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
