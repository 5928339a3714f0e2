#include "cpu_math.h"

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define INFINIDEPTH_BF16 1
#include <immintrin.h>
#endif

#include "fused_decode.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define INFINIDEPTH_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define INFINIDEPTH_CLONES
#endif

// Helpers must be inlined into each clone to be compiled for its instruction set.
#define INFINIDEPTH_INLINE inline __attribute__((always_inline))

namespace infinidepth {
namespace {

typedef float v8 __attribute__((vector_size(32)));  // 8 floats: one AVX2 register, two SSE ones

INFINIDEPTH_INLINE v8 load8(const float* p) {
  v8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// R rows x 16 columns of y accumulated in registers over the whole K loop.
template <int R>
INFINIDEPTH_INLINE void block16(const float* x, int64_t ldx, const float* b, int64_t ldb, float* y, int64_t ldy, int64_t K) {
  v8 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = v8{};
  for (int64_t k = 0; k < K; ++k) {
    const v8 b0 = load8(b + k * ldb), b1 = load8(b + k * ldb + 8);
    for (int r = 0; r < R; ++r) {
      const float xv = x[r * ldx + k];
      acc[r][0] += xv * b0;
      acc[r][1] += xv * b1;
    }
  }
  for (int r = 0; r < R; ++r) {
    const v8 y0 = load8(y + r * ldy) + acc[r][0], y1 = load8(y + r * ldy + 8) + acc[r][1];
    std::memcpy(y + r * ldy, &y0, sizeof y0);
    std::memcpy(y + r * ldy + 8, &y1, sizeof y1);
  }
}

INFINIDEPTH_INLINE void edge(const float* x, int64_t ldx, const float* b, int64_t ldb, float* y, int64_t ldy, int64_t rows,
                 int64_t K, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < K; ++k) {
      const float xv = x[r * ldx + k];
      for (int64_t j = 0; j < cols; ++j) y[r * ldy + j] += xv * b[k * ldb + j];
    }
}

// exp for x <= 0 (all this file needs), branch-free so that loops over it vectorise:
// 2^n * p(r), n = round(x / ln 2), r = x - n ln 2 split in two parts, p a degree-6 Taylor polynomial.
INFINIDEPTH_INLINE float exp_nonpositive(float x) {
  x = x < -87.f ? -87.f : x;
  const float n = std::floor(x * 1.4426950408889634f + 0.5f);
  const float r = x - n * 0.693145751953125f - n * 1.4286068203094172e-06f;
  float p = 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), odd extension.
INFINIDEPTH_INLINE float erf_approx(float x) {
  const float a = std::fabs(x);
  const float t = 1.f / (1.f + 0.3275911f * a);
  float poly = 1.061405429f;
  poly = poly * t - 1.453152027f;
  poly = poly * t + 1.421413741f;
  poly = poly * t - 0.284496736f;
  poly = poly * t + 0.254829592f;
  const float y = 1.f - poly * t * exp_nonpositive(-a * a);
  return std::copysign(y, x);
}

INFINIDEPTH_INLINE float gelu(float x) { return 0.5f * x * (1.f + erf_approx(x * 0.70710678118654752f)); }

// d/dx of x * Phi(x) = Phi(x) + x * phi(x).
INFINIDEPTH_INLINE float gelu_derivative(float x) {
  return 0.5f * (1.f + erf_approx(x * 0.70710678118654752f)) + x * 0.3989422804014327f * exp_nonpositive(-0.5f * x * x);
}

}  // namespace

void pack_weight(const float* w, int64_t N, int64_t K, float* packed) {
  for (int64_t p = 0; p < (N + 15) / 16; ++p)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t c = 0; c < 16; ++c) {
        const int64_t n = p * 16 + c;
        packed[(p * K + k) * 16 + c] = n < N ? w[n * K + k] : 0.f;
      }
}

INFINIDEPTH_CLONES
void gemm_accumulate(const float* x, int64_t ldx, const float* packed, float* y, int64_t ldy, int64_t T, int64_t K,
                     int64_t N) {
  // 6 rows x 16 columns: 12 AVX2 accumulators (the classic Haswell micro-kernel shape).
  constexpr int R = 6;
  for (int64_t j = 0; j < N; j += 16) {
    const float* panel = packed + j * K;  // panel j/16 starts at (j/16) * K * 16 floats
    const int64_t cols = N - j < 16 ? N - j : 16;
    int64_t r = 0;
    if (cols < 16) {
      edge(x, ldx, panel, 16, y + j, ldy, T, K, cols);
      continue;
    }
    for (; r + R <= T; r += R) block16<R>(x + r * ldx, ldx, panel, 16, y + r * ldy + j, ldy, K);
    const float* xr = x + r * ldx;
    float* yr = y + r * ldy + j;
    switch (T - r) {  // 0..5 rows left: one smaller block
      case 1: block16<1>(xr, ldx, panel, 16, yr, ldy, K); break;
      case 2: block16<2>(xr, ldx, panel, 16, yr, ldy, K); break;
      case 3: block16<3>(xr, ldx, panel, 16, yr, ldy, K); break;
      case 4: block16<4>(xr, ldx, panel, 16, yr, ldy, K); break;
      case 5: block16<5>(xr, ldx, panel, 16, yr, ldy, K); break;
      default: break;
    }
  }
}

const float* zero_row(int64_t C) {
  thread_local std::vector<float> zeros;
  if (static_cast<int64_t>(zeros.size()) < C) zeros.assign(C, 0.f);
  return zeros.data();
}

INFINIDEPTH_CLONES
void bilinear_accumulate(const float* const* taps, const float* weights, float* y, int64_t ldy, int64_t rows,
                         int64_t C) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* __restrict__ p0 = taps[4 * r];
    const float* __restrict__ p1 = taps[4 * r + 1];
    const float* __restrict__ p2 = taps[4 * r + 2];
    const float* __restrict__ p3 = taps[4 * r + 3];
    const float w0 = weights[4 * r], w1 = weights[4 * r + 1], w2 = weights[4 * r + 2], w3 = weights[4 * r + 3];
    float* __restrict__ row = y + r * ldy;
    for (int64_t c = 0; c < C; ++c) row[c] += w0 * p0[c] + w1 * p1[c] + w2 * p2[c] + w3 * p3[c];
  }
}

INFINIDEPTH_CLONES
void activate_inplace(float* x, int64_t n, int act) {
  switch (act) {
    case kRelu:
      for (int64_t i = 0; i < n; ++i) x[i] = x[i] < 0.f ? 0.f : x[i];
      break;
    case kGelu:
      for (int64_t i = 0; i < n; ++i) x[i] = gelu(x[i]);
      break;
    case kElu:
      for (int64_t i = 0; i < n; ++i) x[i] = x[i] < 0.f ? exp_nonpositive(x[i]) - 1.f : x[i];
      break;
    default:
      break;
  }
}

INFINIDEPTH_CLONES
void activate_with_tangents(float* x, int64_t rows, int64_t width, int act) {
  if (act == kNone) return;
  for (int64_t r = 0; r < rows; ++r) {
    float* __restrict__ v = x + r * width;
    float* __restrict__ ty = x + (rows + r) * width;
    float* __restrict__ tx = x + (2 * rows + r) * width;
    for (int64_t c = 0; c < width; ++c) {
      const float pre = v[c];
      float d, out;
      if (act == kRelu) {
        d = pre > 0.f ? 1.f : 0.f;
        out = pre < 0.f ? 0.f : pre;
      } else if (act == kGelu) {
        d = gelu_derivative(pre);
        out = gelu(pre);
      } else {  // kElu: exp(min(pre, 0)) is the derivative for pre <= 0 and 1 above, the value minus 1
        const float e = exp_nonpositive(pre < 0.f ? pre : 0.f);
        d = pre > 0.f ? 1.f : e;
        out = pre < 0.f ? e - 1.f : pre;
      }
      ty[c] *= d;
      tx[c] *= d;
      v[c] = out;
    }
  }
}

void pack_weight_bf16(const float* w, int64_t N, int64_t K, uint16_t* packed) {
  const int64_t K2 = (K + 1) / 2;
  for (int64_t p = 0; p < (N + 15) / 16; ++p)
    for (int64_t k2 = 0; k2 < K2; ++k2)
      for (int64_t c = 0; c < 16; ++c)
        for (int64_t j = 0; j < 2; ++j) {
          const int64_t n = p * 16 + c, k = 2 * k2 + j;
          packed[((p * K2 + k2) * 16 + c) * 2 + j] = n < N && k < K ? to_bf16(w[n * K + k]) : 0;
        }
}

#ifdef INFINIDEPTH_BF16

bool cpu_supports_bf16() { return __builtin_cpu_supports("avx512bf16"); }

namespace {

#define INFINIDEPTH_BF16_TARGET __attribute__((target("avx512f,avx512vl,avx512bw,avx512bf16")))

// `rows` (at most 12) rows x 16 columns of y over all K2 pairs: one 16-lane accumulator per row, the
// panel's vector loaded once per pair and used by every row (x's pair broadcast to all lanes).
INFINIDEPTH_BF16_TARGET inline __attribute__((always_inline)) void block16_bf16(
    const uint32_t* x2, int64_t ldx2, const uint16_t* panel, float* y, int64_t ldy, int64_t rows, int64_t K2,
    __mmask16 cols) {
  __m512 acc[12];
  for (int r = 0; r < 12; ++r) acc[r] = _mm512_setzero_ps();
  if (rows == 12) {  // the steady state: a fixed trip count, so acc stays in registers
    for (int64_t k = 0; k < K2; ++k) {
      const __m512bh w = (__m512bh)_mm512_loadu_si512(panel + k * 32);
      for (int r = 0; r < 12; ++r)
        acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_set1_epi32(static_cast<int>(x2[r * ldx2 + k])), w);
    }
  } else {
    for (int64_t k = 0; k < K2; ++k) {
      const __m512bh w = (__m512bh)_mm512_loadu_si512(panel + k * 32);
      for (int r = 0; r < rows; ++r)
        acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_set1_epi32(static_cast<int>(x2[r * ldx2 + k])), w);
    }
  }
  for (int r = 0; r < rows; ++r) {
    float* row = y + r * ldy;
    _mm512_mask_storeu_ps(row, cols, _mm512_add_ps(_mm512_maskz_loadu_ps(cols, row), acc[r]));
  }
}

}  // namespace

INFINIDEPTH_BF16_TARGET
void gemm_accumulate_bf16(const float* x, int64_t ldx, const uint16_t* packed, float* y, int64_t ldy, int64_t T,
                          int64_t K, int64_t N, uint16_t* scratch) {
  const int64_t K2 = (K + 1) / 2;
  for (int64_t r = 0; r < T; ++r) {  // x in bf16, an odd K padded with a zero
    uint16_t* row = scratch + r * 2 * K2;
    for (int64_t k = 0; k < K; ++k) row[k] = to_bf16(x[r * ldx + k]);
    if (K % 2) row[K] = 0;
  }
  const uint32_t* x2 = reinterpret_cast<const uint32_t*>(scratch);
  for (int64_t j = 0; j < N; j += 16) {
    const uint16_t* panel = packed + j / 16 * K2 * 32;
    const __mmask16 cols = N - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (N - j)) - 1);
    for (int64_t r = 0; r < T; r += 12)
      block16_bf16(x2 + r * K2, K2, panel, y + r * ldy + j, ldy, T - r < 12 ? T - r : 12, K2, cols);
  }
}

#else

bool cpu_supports_bf16() { return false; }

void gemm_accumulate_bf16(const float*, int64_t, const uint16_t*, float*, int64_t, int64_t, int64_t, int64_t,
                          uint16_t*) {
  throw std::runtime_error("the bf16 CPU GEMM needs an x86-64 build with AVX512_BF16");
}

#endif

}  // namespace infinidepth
