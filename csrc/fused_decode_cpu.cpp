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
  const int64_t C = m.C;
  for (int64_t t = 0; t < count; ++t) {
    const int64_t q = q0 + t;
    const BilinearTaps taps = bilinear_taps(coords[2 * q], coords[2 * q + 1], m.H, m.W);
    const float* base = m.data + (q / N) * m.H * m.W * C;
    const float* __restrict__ p0 = base + taps.index[0] * C;
    const float* __restrict__ p1 = base + taps.index[1] * C;
    const float* __restrict__ p2 = base + taps.index[2] * C;
    const float* __restrict__ p3 = base + taps.index[3] * C;
    const float w0 = taps.weight[0], w1 = taps.weight[1], w2 = taps.weight[2], w3 = taps.weight[3];
    float* __restrict__ row = y + t * C;
    for (int64_t c = 0; c < C; ++c) row[c] += w0 * p0[c] + w1 * p1[c] + w2 * p2[c] + w3 * p3[c];
  }
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
