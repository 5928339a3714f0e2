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

// y[t, :] += bilerp(map, query q0 + t) for the tile's queries. With tangents, the tile holds
// `count` value rows then `count` d/dy rows then `count` d/dx rows, and the tangent rows get the
// derivative of the blend (same taps, differentiated weights).
void gather_add(const FusedMap& m, const float* coords, int64_t q0, int64_t count, int64_t N, float* y, bool tangents) {
  const float* taps[4 * kTile];
  float weights[3][4 * kTile];
  const float* zeros = zero_row(m.C);
  for (int64_t t = 0; t < count; ++t) {
    const int64_t q = q0 + t;
    const BilinearTapsGrad b = bilinear_taps_grad(coords[2 * q], coords[2 * q + 1], m.H, m.W);
    const float* base = m.data + (q / N) * m.H * m.W * m.C;
    for (int i = 0; i < 4; ++i) {
      taps[4 * t + i] = b.index[i] < 0 ? zeros : base + b.index[i] * m.C;
      weights[0][4 * t + i] = b.weight[i];
      weights[1][4 * t + i] = b.dy[i];
      weights[2][4 * t + i] = b.dx[i];
    }
  }
  for (int k = 0; k < (tangents ? 3 : 1); ++k) bilinear_accumulate(taps, weights[k], y + k * count * m.C, m.C, count, m.C);
}

}  // namespace

// packed[l]: layer l's weight in pack_weight's layout, or pack_weight_bf16's for the layers that
// run in bf16 (bf16_layer[l]).
void fused_decode_cpu(const FusedProgram& prog, const std::vector<at::Tensor>& packed, const std::vector<bool>& bf16_layer,
                      const float* coords, float* out, int64_t B, int64_t N, bool with_grad) {
  const int64_t total = B * N;
  const int64_t width = prog.max_width;
  const int64_t blocks = with_grad ? 3 : 1;  // value rows, then the two tangent blocks
  at::parallel_for(0, (total + kTile - 1) / kTile, 1, [&](int64_t tile_begin, int64_t tile_end) {
    // Two ping-pong buffers per thread: a tile's activations stay in this core's cache.
    std::vector<float> buf_a(blocks * kTile * width), buf_b(blocks * kTile * width);
    std::vector<uint16_t> bf16_rows(kTile * (width + 1));  // a tile's activations rounded to bf16
    for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
      const int64_t q0 = tile * kTile;
      const int64_t count = std::min(kTile, total - q0);
      float* x = buf_a.data();
      float* y = buf_b.data();
      for (int l = 0; l < prog.num_layers; ++l) {
        const FusedLayer& L = prog.layers[l];
        // Tangents get no bias: it does not depend on the query.
        for (int64_t t = 0; t < count; ++t) std::copy(L.bias, L.bias + L.out, y + t * L.out);
        std::fill(y + count * L.out, y + blocks * count * L.out, 0.f);
        // The weight acts on value and tangent rows alike: one GEMM over all of them.
        if (L.weight && bf16_layer[l]) {
          gemm_accumulate_bf16(x, L.in, reinterpret_cast<const uint16_t*>(packed[l].data_ptr<int16_t>()), y, L.out,
                               blocks * count, L.in, L.out, bf16_rows.data());
        } else if (L.weight) {
          gemm_accumulate(x, L.in, packed[l].data_ptr<float>(), y, L.out, blocks * count, L.in, L.out);
        }
        for (int m = 0; m < prog.num_maps; ++m) {
          if (prog.maps[m].layer == l) gather_add(prog.maps[m], coords, q0, count, N, y, with_grad);
        }
        if (with_grad) {
          activate_with_tangents(y, count, L.out, L.act);
        } else {
          activate_inplace(y, count * L.out, L.act);
        }
        std::swap(x, y);
      }
      for (int64_t t = 0; t < count; ++t) {
        if (with_grad) {
          out[3 * (q0 + t)] = x[t];
          out[3 * (q0 + t) + 1] = x[count + t];
          out[3 * (q0 + t) + 2] = x[2 * count + t];
        } else {
          out[q0 + t] = x[t];
        }
      }
    }
  });
}

}  // namespace infinidepth
