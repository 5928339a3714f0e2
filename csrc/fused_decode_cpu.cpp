// CPU fused decoder: tiles of queries, each decoded through all layers in cache-resident buffers.
// Gathers are vectorised loops over channels; the dense layers are a register-blocked GEMM per
// tile (cpu_math.cpp). ATen ops are not called inside the parallel region: at::addmm there gave
// wrong results when several threads ran it at once. No per-query tensor is ever materialised.
#include <algorithm>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "bilinear_gather.h"
#include "cpu_math.h"
#include "fused_decode.h"

namespace infinidepth {
namespace {

constexpr int64_t kTile = 48;  // a multiple of the GEMM's 6-row block

// y[t, :] += bilerp(map, query q0 + t) for the tile's queries.
void gather_add(const FusedMap& m, const float* coords, int64_t q0, int64_t count, int64_t N, float* y) {
  const float* taps[4 * kTile];
  float weights[4 * kTile];
  for (int64_t t = 0; t < count; ++t) {
    const int64_t q = q0 + t;
    const BilinearTaps b = bilinear_taps(coords[2 * q], coords[2 * q + 1], m.H, m.W);
    const float* base = m.data + (q / N) * m.H * m.W * m.C;
    for (int i = 0; i < 4; ++i) {
      taps[4 * t + i] = base + b.index[i] * m.C;
      weights[4 * t + i] = b.weight[i];
    }
  }
  bilinear_accumulate(taps, weights, y, m.C, count, m.C);
}

}  // namespace

void fused_decode_cpu(const FusedProgram& prog, const std::vector<at::Tensor>& packed, const float* coords,
                      float* out, int64_t B, int64_t N) {
  const int64_t total = B * N;
  const int64_t width = prog.max_width;
  at::parallel_for(0, (total + kTile - 1) / kTile, 1, [&](int64_t tile_begin, int64_t tile_end) {
    // Two ping-pong buffers per thread: a tile's activations stay in this core's cache.
    std::vector<float> buf_a(kTile * width), buf_b(kTile * width);
    for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
      const int64_t q0 = tile * kTile;
      const int64_t count = std::min(kTile, total - q0);
      float* x = buf_a.data();
      float* y = buf_b.data();
      for (int l = 0; l < prog.num_layers; ++l) {
        const FusedLayer& L = prog.layers[l];
        for (int64_t t = 0; t < count; ++t) std::copy(L.bias, L.bias + L.out, y + t * L.out);
        if (L.weight) gemm_accumulate(x, L.in, packed[l].data_ptr<float>(), y, L.out, count, L.in, L.out);
        for (int m = 0; m < prog.num_maps; ++m) {
          if (prog.maps[m].layer == l) gather_add(prog.maps[m], coords, q0, count, N, y);
        }
        activate_inplace(y, count * L.out, L.act);
        std::swap(x, y);
      }
      for (int64_t t = 0; t < count; ++t) out[q0 + t] = x[t];
    }
  });
}

}  // namespace infinidepth
