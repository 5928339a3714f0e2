// The fused implicit decoder: one pass over the queries of a folded decoder program
// (infinidepth/ops/fold.py). Layer l computes
//     x_l = act_l( W_l x_{l-1} + b_l + sum over maps m feeding l of bilerp(P_m, query) )
// with W_0 absent; the last layer has width 1 and its value is the query's output.
// Maps are channels-last [B, H, W, C_l]; the coordinate convention is bilinear_gather.h's.
#pragma once
#include <cstdint>

namespace infinidepth {

enum Activation : int { kNone = 0, kRelu = 1, kGelu = 2, kElu = 3 };

constexpr int kMaxLayers = 8;
constexpr int kMaxMaps = 8;

struct FusedMap {
  const float* data;  // [B, H, W, C] channels-last
  int64_t H, W, C;
  int layer;  // the layer whose pre-activation it adds to
};

struct FusedLayer {
  const float* weight;    // [out, in] row-major, nullptr for layer 0
  const float* weight_t;  // [in, out] row-major (filled for the CUDA kernel)
  const void* weight_t16; // the same in bf16, for tensor cores (CUDA, bf16 precision only)
  const float* bias;      // [out]
  int64_t in, out;
  int act;
};

struct FusedProgram {
  FusedMap maps[kMaxMaps];
  int num_maps;
  FusedLayer layers[kMaxLayers];
  int num_layers;
  int64_t max_width;  // widest layer
};

// CUDA launcher; stream is a cudaStream_t passed as void*. With tensor_cores the GEMMs take bf16
// operands (weight_t16) with fp32 accumulation; otherwise they are fp32 (3xTF32 on the tensor
// cores where WMMA's shapes fit, within fp32's tolerance; CUDA cores elsewhere). With
// with_grad, out is [B, N, 3]: the value and its derivatives d/dy, d/dx (forward mode), always in
// fp32 as in the CPU kernel: through bf16 tiles the tangents came out with RMS errors of 0.3% to
// 21% of their spread (0.4% to 1.1% for the values) on random programs.
// Layers wider than fused_decode_cuda_narrow_limit() are streamed into the next layer, which must
// exist and be narrower.
void fused_decode_cuda(const FusedProgram& program, const float* coords, float* out, int64_t B, int64_t N,
                       bool tensor_cores, bool with_grad, void* stream);
int64_t fused_decode_cuda_narrow_limit();
// Queries' rows per thread block the launcher picks for this program on the current device: 16 for
// tangents, otherwise the most of 64, 32, 16 whose shared memory the device has.
int fused_decode_cuda_rows(const FusedProgram& program, bool tensor_cores, bool with_grad);

}  // namespace infinidepth
