// Vectorisable CPU building blocks of the fused decoder: a register-blocked GEMM for a tile of
// queries and the activations. Each entry point is compiled for AVX-512, AVX2+FMA and baseline
// x86-64 and picked at run time (GCC target_clones), so one binary is fast on any x86 machine.
#pragma once
#include <cstdint>

namespace infinidepth {

// bf16 (the top half of a float32) from a float, rounded to nearest even, a NaN kept a (quiet) NaN:
// what torch's .bfloat16() does. Rounding a NaN's mantissa could carry into its exponent and sign
// (0xFFFFFFFF, the NaN of memory filled with 0xFF bytes, became +0: a NaN map cell gave finite answers).
inline uint16_t to_bf16(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, sizeof u);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// Floats needed by pack_weight's output.
inline int64_t packed_size(int64_t N, int64_t K) { return (N + 15) / 16 * K * 16; }

// Packs a weight w [N, K] (row-major, out x in) into panels of 16 output columns, [ceil(N/16)][K][16],
// zero-padded: the layout gemm_accumulate streams through (contiguous, one cache line per k).
void pack_weight(const float* w, int64_t N, int64_t K, float* packed);

// y[T, N] += x[T, K] @ w^T with w packed by pack_weight; x and y row-major with leading dims ldx, ldy.
void gemm_accumulate(const float* x, int64_t ldx, const float* packed, float* y, int64_t ldy, int64_t T, int64_t K,
                     int64_t N);

// The bf16 GEMM (precision "bf16" on the CPU): bf16 operands, products exact, sums in fp32, through
// AVX512_BF16's dot-product instruction (2x the multiply-adds per instruction of fp32 FMA).
// cpu_supports_bf16() says whether this CPU has it; the other bf16 entry points need it.
bool cpu_supports_bf16();

// uint16 elements needed by pack_weight_bf16's output.
inline int64_t packed_size_bf16(int64_t N, int64_t K) { return (N + 15) / 16 * ((K + 1) / 2) * 32; }

// Packs w [N, K] into panels of 16 output columns holding pairs of consecutive k, zero-padded:
// [ceil(N/16)][ceil(K/2)][16][2] bf16, one 64-byte vector per panel and pair.
void pack_weight_bf16(const float* w, int64_t N, int64_t K, uint16_t* packed);

// y[T, N] += bf16(x[T, K]) @ w^T with w packed by pack_weight_bf16. scratch holds T * 2 * ceil(K/2)
// uint16 (x rounded to bf16, row by row).
void gemm_accumulate_bf16(const float* x, int64_t ldx, const uint16_t* packed, float* y, int64_t ldy, int64_t T,
                          int64_t K, int64_t N, uint16_t* scratch);

// y[r, :C] += sum_i weights[4r + i] * taps[4r + i][:C] for r < rows: the bilinear blend of each
// row's four taps (pointers to C contiguous floats; a tap outside the map points at zero_row(C)).
// C zeros (this thread's, valid until it asks for more): what a bilinear tap outside the map reads,
// so that the blends stay branch-free and 0 * a NaN cell never happens.
const float* zero_row(int64_t C);

void bilinear_accumulate(const float* const* taps, const float* weights, float* y, int64_t ldy, int64_t rows, int64_t C);

// In-place activation of n values (codes of fused_decode.h). GELU is the exact (erf) one, with erf
// evaluated to ~2e-7 absolute error.
void activate_inplace(float* x, int64_t n, int act);

// Forward-mode step of an activation over a tile stored as `rows` value rows followed by two blocks
// of `rows` tangent rows (d/dy, d/dx), each row `width` floats: the tangents are multiplied by
// act'(value), then the values are activated.
void activate_with_tangents(float* x, int64_t rows, int64_t width, int act);

}  // namespace infinidepth
