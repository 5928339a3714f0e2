// Vectorisable CPU building blocks of the fused decoder: a register-blocked GEMM for a tile of
// queries and the activations. Each entry point is compiled for AVX-512, AVX2+FMA and baseline
// x86-64 and picked at run time (GCC target_clones), so one binary is fast on any x86 machine.
#pragma once
#include <cstdint>

namespace infinidepth {

// Floats needed by pack_weight's output.
inline int64_t packed_size(int64_t N, int64_t K) { return (N + 15) / 16 * K * 16; }

// Packs a weight w [N, K] (row-major, out x in) into panels of 16 output columns, [ceil(N/16)][K][16],
// zero-padded: the layout gemm_accumulate streams through (contiguous, one cache line per k).
void pack_weight(const float* w, int64_t N, int64_t K, float* packed);

// y[T, N] += x[T, K] @ w^T with w packed by pack_weight; x and y row-major with leading dims ldx, ldy.
void gemm_accumulate(const float* x, int64_t ldx, const float* packed, float* y, int64_t ldy, int64_t T, int64_t K,
                     int64_t N);

// y[r, :C] += sum_i weights[4r + i] * taps[4r + i][:C] for r < rows: the bilinear blend of each
// row's four taps (pointers to C contiguous floats).
void bilinear_accumulate(const float* const* taps, const float* weights, float* y, int64_t ldy, int64_t rows, int64_t C);

// In-place activation of n values (codes of fused_decode.h). GELU is the exact (erf) one, with erf
// evaluated to ~2e-7 absolute error.
void activate_inplace(float* x, int64_t n, int act);

// Forward-mode step of an activation over a tile stored as `rows` value rows followed by two blocks
// of `rows` tangent rows (d/dy, d/dx), each row `width` floats: the tangents are multiplied by
// act'(value), then the values are activated.
void activate_with_tangents(float* x, int64_t rows, int64_t width, int act);

}  // namespace infinidepth
