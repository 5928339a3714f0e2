// C entry points of the CUDA fused decoder compiled under the host emulation
// (csrc/tests/cuda_emulation.h), for tests/test_cuda_emulated.py (ctypes). The caller prepares what
// ops_cuda.cpp prepares on a GPU: transposed weights (and their bf16 copies), channels-last maps.
#include <cstdint>

#include "../fused_decode.h"

extern "C" {

int64_t emulated_narrow_limit() { return infinidepth::fused_decode_cuda_narrow_limit(); }

// Layer l: bias[l] (widths[l] floats), weight_t[l] ([widths[l-1], widths[l]] or null for l = 0),
// weight_t16[l] (its bf16 bits, read with tensor_cores), acts[l]. Map m: maps[m] channels-last
// [B, map_hw[2m], map_hw[2m+1], widths[map_layer[m]]].
void emulated_fused_decode(int num_layers, const int64_t* widths, const int* acts, const float* const* bias,
                           const float* const* weight_t, const void* const* weight_t16, int num_maps,
                           const float* const* maps, const int64_t* map_hw, const int* map_layer,
                           const float* coords, int64_t B, int64_t N, int tensor_cores, int with_grad, float* out) {
  infinidepth::FusedProgram p{};
  p.num_layers = num_layers;
  p.num_maps = num_maps;
  for (int l = 0; l < num_layers; ++l) {
    infinidepth::FusedLayer& L = p.layers[l];
    L.weight = weight_t[l];  // only tested for null by the kernel
    L.weight_t = weight_t[l];
    L.weight_t16 = weight_t16[l];
    L.bias = bias[l];
    L.in = l > 0 ? widths[l - 1] : 0;
    L.out = widths[l];
    L.act = acts[l];
    if (L.out > p.max_width) p.max_width = L.out;
  }
  for (int m = 0; m < num_maps; ++m)
    p.maps[m] = infinidepth::FusedMap{maps[m], map_hw[2 * m], map_hw[2 * m + 1], widths[map_layer[m]], map_layer[m]};
  infinidepth::fused_decode_cuda(p, coords, out, B, N, tensor_cores != 0, with_grad != 0, nullptr);
}

}  // extern "C"
