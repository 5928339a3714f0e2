#include <cmath>

#include <ATen/Parallel.h>

#include "bilinear_gather.h"
#include "cpu_math.h"

namespace infinidepth {

void bilinear_gather_cpu(const float* feat, const float* coords, float* out, int64_t B, int64_t H, int64_t W,
                         int64_t C, int64_t N) {
  // Queries are independent; a grain of 256 keeps threads busy without false sharing of outputs.
  at::parallel_for(0, B * N, 256, [&](int64_t begin, int64_t end) {
    const float* zeros = zero_row(C);
    for (int64_t q = begin; q < end; ++q) {
      const int64_t b = q / N;
      const BilinearTaps t = bilinear_taps(coords[2 * q], coords[2 * q + 1], H, W);
      const float* base = feat + b * H * W * C;
      auto tap = [&](int i) { return t.index[i] < 0 ? zeros : base + t.index[i] * C; };
      const float* p0 = tap(0);
      const float* p1 = tap(1);
      const float* p2 = tap(2);
      const float* p3 = tap(3);
      float* o = out + q * C;
      // Channels are contiguous in every tap, so this loop vectorises.
      for (int64_t c = 0; c < C; ++c) {
        o[c] = t.weight[0] * p0[c] + t.weight[1] * p1[c] + t.weight[2] * p2[c] + t.weight[3] * p3[c];
      }
    }
  });
}

}  // namespace infinidepth
