// C entry points of the CUDA kernels (fused decoder, gather) compiled under the host emulation
// (csrc/tests/cuda_emulation.h), for tests/test_cuda_emulated.py (ctypes). The caller prepares what
// ops_cuda.cpp prepares on a GPU: transposed weights (and their bf16 copies), channels-last maps.
#include <cstdint>

#include "../bilinear_gather.h"
#include "../fused_decode.h"
#include "cuda_emulation.h"

extern "C" {

// csrc/bilinear_gather_cuda.cu: feat channels-last [B, H, W, C], coords [B, N, 2] -> out [B, N, C].
void emulated_bilinear_gather(const float* feat, const float* coords, float* out, int64_t B, int64_t H, int64_t W,
                              int64_t C, int64_t N) {
  infinidepth::bilinear_gather_cuda(feat, coords, out, B, H, W, C, N, nullptr);
}

int64_t emulated_narrow_limit() { return infinidepth::fused_decode_cuda_narrow_limit(); }

// The emulated device's shared memory per block (bytes): which tile sizes the launcher may pick.
void emulated_set_shared_memory_limit(int bytes) { cuda_emulation::max_shared_per_block = bytes; }

namespace {

infinidepth::FusedProgram program(int num_layers, const int64_t* widths, const int* acts, const float* const* bias,
                                  const float* const* weight_t, const void* const* weight_t16, int num_maps,
                                  const float* const* maps, const int64_t* map_hw, const int* map_layer) {
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
  return p;
}

}  // namespace

// Layer l: bias[l] (widths[l] floats), weight_t[l] ([widths[l-1], widths[l]] or null for l = 0),
// weight_t16[l] (its bf16 bits, read with tensor_cores), acts[l]. Map m: maps[m] channels-last
// [B, map_hw[2m], map_hw[2m+1], widths[map_layer[m]]].
// Sets *rows to the rows per block the launcher picked. Returns cuda_emulation::last_error (0: no
// error; 1: more shared memory asked for than the emulated device has; 2: a misaligned WMMA access).
int emulated_fused_decode(int num_layers, const int64_t* widths, const int* acts, const float* const* bias,
                          const float* const* weight_t, const void* const* weight_t16, int num_maps,
                          const float* const* maps, const int64_t* map_hw, const int* map_layer,
                          const float* coords, int64_t B, int64_t N, int tensor_cores, int with_grad, float* out,
                          int* rows) {
  const infinidepth::FusedProgram p =
      program(num_layers, widths, acts, bias, weight_t, weight_t16, num_maps, maps, map_hw, map_layer);
  *rows = infinidepth::fused_decode_cuda_rows(p, tensor_cores != 0, with_grad != 0);
  cuda_emulation::last_error = 0;
  infinidepth::fused_decode_cuda(p, coords, out, B, N, tensor_cores != 0, with_grad != 0, nullptr);
  return cuda_emulation::last_error;
}

}  // extern "C"
