// CPU compositing of projected Gaussians (infinidepth/gs/render.py has the contract; its
// render_torch is the reference this kernel is tested against).
//
// Python projects the Gaussians and bins them into tiles of `tile` x `tile` pixels, each tile's
// list sorted front to back. Here every pixel walks its tile's list in that order, exactly as the
// reference composites it, but stops where the reference's weights become zero for good: at the
// first Gaussian that would take the transmittance below T_MIN. The reference evaluates every
// (pixel, Gaussian) pair of the tile; an opaque surface ends the walk after a few dozen.
// Tiles run in parallel; a pixel's sums are sequential in the list's order, as the reference's
// cumulative products are.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <ATen/Parallel.h>

namespace infinidepth {

// The same constants as infinidepth/gs/render.py.
constexpr double kAlphaMin = 1.0 / 255.0, kAlphaMax = 0.999, kTMin = 1e-4;

template <typename T>
void gs_composite_cpu(const T* mean2d, const T* conic, const T* opacity, const T* color, const T* depth, int64_t N,
                      const int64_t* first, const int64_t* count, const int64_t* order, int64_t H, int64_t W,
                      int64_t tile, const T* background, T* out_rgb, T* out_depth, T* out_alpha) {
  const int64_t TX = (W + tile - 1) / tile, TY = (H + tile - 1) / tile;
  const T alpha_min = static_cast<T>(kAlphaMin), alpha_max = static_cast<T>(kAlphaMax), t_min = static_cast<T>(kTMin);
  // opacity * exp(power) < alpha_min wherever power < log(alpha_min / opacity): most of a footprint's
  // pixels. Those skip the exp. The margin (0.1% in alpha, far above exp's rounding) leaves every
  // borderline case to the exact test below, so the result is the same with or without this filter.
  std::vector<T> skip_below(static_cast<size_t>(N));
  at::parallel_for(0, N, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      skip_below[i] = opacity[i] > T(0) ? std::log(alpha_min / opacity[i]) - T(1e-3) : std::numeric_limits<T>::infinity();
  });
  at::parallel_for(0, TX * TY, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t ty = t / TX, tx = t % TX;
      const int64_t* list = order + first[t];
      const int64_t n = count[t];
      for (int64_t py = ty * tile; py < std::min(H, (ty + 1) * tile); ++py) {
        for (int64_t px = tx * tile; px < std::min(W, (tx + 1) * tile); ++px) {
          // the pixel's centre, formed as the reference forms it: tile origin + offset + 0.5
          const T cx = static_cast<T>(tx * tile) + (static_cast<T>(px - tx * tile) + T(0.5));
          const T cy = static_cast<T>(ty * tile) + (static_cast<T>(py - ty * tile) + T(0.5));
          T transmittance = 1, acc = 0, r = 0, g = 0, b = 0, d = 0;
          for (int64_t k = 0; k < n; ++k) {
            const int64_t i = list[k];
            const T dx = cx - mean2d[2 * i], dy = cy - mean2d[2 * i + 1];
            const T* q = conic + 4 * i;  // [[a, b], [b, c]]
            const T power = T(-0.5) * (q[0] * (dx * dx) + q[3] * (dy * dy) + T(2) * q[1] * dx * dy);  // the reference's order
            if (power > T(0) || power < skip_below[i]) continue;
            const T a = std::min(alpha_max, opacity[i] * std::exp(power));
            if (a < alpha_min) continue;
            const T next = transmittance * (T(1) - a);
            if (next < t_min) break;  // this one is excluded, and every one after it
            const T w = a * transmittance;
            r += w * color[3 * i];
            g += w * color[3 * i + 1];
            b += w * color[3 * i + 2];
            d += w * depth[i];
            acc += w;
            transmittance = next;
          }
          const int64_t p = py * W + px;
          out_rgb[3 * p] = r + (T(1) - acc) * background[0];
          out_rgb[3 * p + 1] = g + (T(1) - acc) * background[1];
          out_rgb[3 * p + 2] = b + (T(1) - acc) * background[2];
          out_depth[p] = acc > T(0) ? d / std::max(acc, T(1e-12)) : T(0);
          out_alpha[p] = acc;
        }
      }
    }
  });
}

template void gs_composite_cpu<float>(const float*, const float*, const float*, const float*, const float*, int64_t,
                                      const int64_t*, const int64_t*, const int64_t*, int64_t, int64_t, int64_t,
                                      const float*, float*, float*, float*);
template void gs_composite_cpu<double>(const double*, const double*, const double*, const double*, const double*, int64_t,
                                       const int64_t*, const int64_t*, const int64_t*, int64_t, int64_t, int64_t,
                                       const double*, double*, double*, double*);

}  // namespace infinidepth
