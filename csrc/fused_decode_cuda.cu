// CUDA fused decoder: one thread block decodes a tile of kRows queries through the whole folded
// program (fused_decode.h), keeping the tile's activations in shared memory; only one float per
// query is written to global memory. Tangents use 16 rows; otherwise a block takes as many rows as
// the device's shared memory holds, up to 64 (the official ViT-L decoder fits 64 on an H100, the
// paper's 32): each block streams every weight once, so more rows means less weight traffic per query.
//
// Wide layers (wider than kNarrow) are never stored whole: they are produced kKC channels at a time
// and contracted at once into the next layer's accumulator ("streamed pairs", as in
// kernels/fused_decode.py). GEMMs run on tensor cores (WMMA) with bf16 operands, or for fp32 as
// 3xTF32 (fp32-close, see split_tf32), and on CUDA cores for shapes WMMA does not fit (the last
// layer, width 1). Sums are fp32 throughout.
//
// With kGrad the block's 16 rows hold 5 queries' values, then their d/dy tangents, then their d/dx
// tangents (row 15 stays zero): the weights act on all rows alike, the gathers give tangent rows the
// differentiated bilinear weights, and the activation scales tangents by act'(value) (forward mode).
#include <cstdlib>
#include <type_traits>

#include "bilinear_gather.h"
#include "cuda_launch.h"
#include "fused_decode.h"

namespace infinidepth {
namespace {

constexpr int kNarrow = 512;  // widest layer kept whole in shared memory
constexpr int kKC = 64;       // channels of a wide layer produced per step
// Threads per block: 8 warps for 16 rows, 16 for 32 or 64. A block of 32 or 64 rows fills most of an
// SM's shared memory, so it runs alone there: its warps are all the SM has to hide latency with.
template <int kRows>
constexpr int kThreads = kRows >= 32 ? 512 : 256;
constexpr int kMaxRowTiles = 4;  // up to 64 rows per block

// A row's four taps in one map: element offsets (image and cell; the reader adds the channel) and
// bilinear weights, or for tangent rows their derivatives. Rows without a query get weight 0.
struct RowTaps {
  int64_t offset[4];
  float weight[4];
};

// Shared memory of a block of kRows rows: the taps of the maps of one layer (at most tap_maps), then
// the rows of x, y and x16, ld wide (the program's widest narrow layer, rounded up to 16), and a
// chunk's, kKC wide.
struct Smem {
  RowTaps* taps;         // [tap_maps, kRows] the current layer's maps
  float* x;              // [kRows, ld] previous layer's output
  float* y;              // [kRows, ld] accumulator of the layer being built
  float* chunk;          // [kRows, kKC] a slice of a wide layer
  __nv_bfloat16* x16;    // bf16 copy of x (tensor-core operand)
  __nv_bfloat16* chunk16;
};

// (the bf16 copies only with tensor cores in bf16)
__host__ __device__ constexpr size_t smem_bytes(int rows, int ld, int tap_maps, bool bf16) {
  return static_cast<size_t>(rows) *
         (sizeof(RowTaps) * tap_maps + sizeof(float) * (2 * ld + kKC) + (bf16 ? sizeof(__nv_bfloat16) * (ld + kKC) : 0));
}

// Queries per block: one per row, or with tangents one per three rows (16 rows: 5 queries, row 15 unused).
template <int kRows, bool kGrad>
constexpr int kQueries = kGrad ? kRows / 3 : kRows;

__device__ __forceinline__ float activate_derivative(float v, int act) {
  switch (act) {
    case kRelu: return v > 0.f ? 1.f : 0.f;
    case kGelu: return 0.5f * (1.f + erff(v * 0.70710678118654752f)) + v * 0.3989422804014327f * expf(-0.5f * v * v);
    case kElu: return v > 0.f ? 1.f : expf(v);
    default: return 1.f;
  }
}

__device__ __forceinline__ float activate(float v, int act) {
  switch (act) {
    case kRelu: return v < 0.f ? 0.f : v;
    case kGelu: return 0.5f * v * (1.f + erff(v * 0.70710678118654752f));
    case kElu: return v < 0.f ? expm1f(v) : v;
    default: return v;
  }
}

// The taps of every row in each map feeding layer l, once per layer (the gathers then read them for
// every channel): taps[j * kRows + r] for the j-th such map. Tangent rows (kGrad) get the
// derivatives of the bilinear weights.
template <int kRows, bool kGrad>
__device__ void compute_taps(const FusedProgram& P, int l, const float* coords, int64_t q0, int64_t N, int64_t total,
                             RowTaps* taps) {
  constexpr int Q = kQueries<kRows, kGrad>;
  for (int m = 0, j = 0; m < P.num_maps; ++m) {
    const FusedMap& M = P.maps[m];
    if (M.layer != l) continue;
    for (int r = threadIdx.x; r < kRows; r += blockDim.x) {
      RowTaps& T = taps[j * kRows + r];
      const int t = r % Q, role = r / Q;
      const int64_t q = q0 + t;
      if (role > 2 || q >= total) {
        for (int i = 0; i < 4; ++i) T.offset[i] = -1, T.weight[i] = 0.f;
        continue;
      }
      const BilinearTapsGrad g = bilinear_taps_grad(coords[2 * q], coords[2 * q + 1], M.H, M.W);
      const float* w = (!kGrad || role == 0) ? g.weight : (role == 1 ? g.dy : g.dx);
      const int64_t image = (q / N) * M.H * M.W * M.C;
      for (int i = 0; i < 4; ++i) T.offset[i] = g.index[i] < 0 ? -1 : image + g.index[i] * M.C, T.weight[i] = w[i];
    }
    ++j;
  }
}

// dst[r, c] += bilerp(map, row r's query) over channels [c0, c0 + count) into rows of width ld, with
// the row's taps in this map. Four channels per thread (16-byte loads and stores) where the map's
// channels and pointer allow it, one otherwise; the sums are the same either way.
template <int kRows>
__device__ void gather_add(const FusedMap& m, const RowTaps* taps, int64_t c0, int count, float* dst, int ld) {
  const bool vec = count % 4 == 0 && c0 % 4 == 0 && m.C % 4 == 0 && ld % 4 == 0 &&
                   reinterpret_cast<uintptr_t>(m.data) % 16 == 0;
  if (vec) {
    const int quads = count / 4;
    for (int i = threadIdx.x; i < kRows * quads; i += blockDim.x) {
      const int r = i / quads, c = (i % quads) * 4;
      const RowTaps& T = taps[r];
      const float* base = m.data + c0 + c;
      float4 v[4];
#pragma unroll
      for (int k = 0; k < 4; ++k)
        v[k] = T.offset[k] < 0 ? make_float4(0.f, 0.f, 0.f, 0.f) : __ldg(reinterpret_cast<const float4*>(base + T.offset[k]));
      float4& d = *reinterpret_cast<float4*>(dst + r * ld + c);
      d.x += T.weight[0] * v[0].x + T.weight[1] * v[1].x + T.weight[2] * v[2].x + T.weight[3] * v[3].x;
      d.y += T.weight[0] * v[0].y + T.weight[1] * v[1].y + T.weight[2] * v[2].y + T.weight[3] * v[3].y;
      d.z += T.weight[0] * v[0].z + T.weight[1] * v[1].z + T.weight[2] * v[2].z + T.weight[3] * v[3].z;
      d.w += T.weight[0] * v[0].w + T.weight[1] * v[1].w + T.weight[2] * v[2].w + T.weight[3] * v[3].w;
    }
    return;
  }
  for (int i = threadIdx.x; i < kRows * count; i += blockDim.x) {
    const int r = i / count, c = i % count;
    const RowTaps& T = taps[r];
    const float* base = m.data + c0 + c;
    float sum = 0.f;
#pragma unroll
    for (int k = 0; k < 4; ++k) sum += T.weight[k] * (T.offset[k] < 0 ? 0.f : __ldg(base + T.offset[k]));
    dst[r * ld + c] += sum;
  }
}

// Every map of layer l into rows of dst (channels [c0, c0 + count)), from the taps in s.taps.
template <int kRows>
__device__ void gather_layer(const FusedProgram& P, int l, const RowTaps* taps, int64_t c0, int count, float* dst,
                             int ld) {
  for (int m = 0, j = 0; m < P.num_maps; ++m)
    if (P.maps[m].layer == l) gather_add<kRows>(P.maps[m], taps + (j++) * kRows, c0, count, dst, ld);
}

// How the warps share C's 16x16 tiles: each takes 16-column strips and, for a strip, G of the
// block's 16-row tiles, so that a tile of Bt is loaded once and multiplied into G accumulators (a
// block of kRows rows reads the weights once for all of them: traffic per query falls as 1 / kRows).
// G is as large as keeps every warp busy: all row tiles when there are at least as many strips as
// warps. Work item i of a warp: columns from n0, rows from r0.
template <int kRows>
struct TileSplit {
  static constexpr int kTiles = kRows / 16;
  static_assert(kRows % 16 == 0 && kTiles <= kMaxRowTiles, "rows per block: 16 to 64, in tiles of 16");
  int strips, groups, G;
  __device__ explicit TileSplit(int N) : strips(N / 16), groups(1) {
    while (strips * groups < static_cast<int>(blockDim.x / 32) && groups < kTiles) groups *= 2;
    G = kTiles / groups;
  }
  __device__ int items() const { return strips * groups; }
  __device__ int n0(int item) const { return (item % strips) * 16; }
  __device__ int r0(int item) const { return (item / strips) * G * 16; }
};

// fp32 to tensor cores, 3xTF32: each operand is split into a tf32 head and the tf32 of what the head
// left (hi + lo carries 21 bits of mantissa), and a*b is hi*hi + hi*lo + lo*hi (lo*lo, about
// 2^-22 of the product, is dropped), the small terms first; sums in fp32. Close to fp32 (tested
// within the fp32 tolerance), at three tf32 products per fp32 one.
template <class Frag>
__device__ __forceinline__ void split_tf32(Frag& hi, Frag& lo) {
  for (int i = 0; i < hi.num_elements; ++i) {
    const float v = hi.x[i];
    hi.x[i] = nvcuda::wmma::__float_to_tf32(v);
    lo.x[i] = nvcuda::wmma::__float_to_tf32(v - hi.x[i]);
  }
}

// C[t, n] += sum_k A[t, k] * Bt[k, n] on the tensor cores, the warps sharing C's tiles as TileSplit
// says: bf16 operands (T = __nv_bfloat16, k-steps of 16), or fp32 ones as 3xTF32 (T = float, kTf32,
// k-steps of 8, each operand split by split_tf32 and lo*hi + hi*lo + hi*hi summed, small terms first).
template <int kRows, bool kTf32, class T>
__device__ void wmma_gemm(const T* A, int lda, int K, const T* Bt, int64_t ldb, int N, float* C, int ldc) {
  using namespace nvcuda;
  constexpr int kTiles = TileSplit<kRows>::kTiles;
  constexpr int kK = kTf32 ? 8 : 16;
  using Operand = std::conditional_t<kTf32, wmma::precision::tf32, T>;
  const TileSplit<kRows> split(N);
  for (int item = threadIdx.x / 32; item < split.items(); item += blockDim.x / 32) {
    const int n0 = split.n0(item), r0 = split.r0(item), G = split.G;
    wmma::fragment<wmma::accumulator, 16, 16, kK, float> acc[kTiles];
#pragma unroll
    for (int g = 0; g < kTiles; ++g)
      if (g < G) wmma::load_matrix_sync(acc[g], C + (r0 + 16 * g) * ldc + n0, ldc, wmma::mem_row_major);
    for (int k0 = 0; k0 < K; k0 += kK) {
      wmma::fragment<wmma::matrix_b, 16, 16, kK, Operand, wmma::row_major> b, b_lo;
      wmma::load_matrix_sync(b, Bt + k0 * ldb + n0, static_cast<unsigned>(ldb));
      if constexpr (kTf32) split_tf32(b, b_lo);
#pragma unroll
      for (int g = 0; g < kTiles; ++g) {
        if (g < G) {
          wmma::fragment<wmma::matrix_a, 16, 16, kK, Operand, wmma::row_major> a, a_lo;
          wmma::load_matrix_sync(a, A + (r0 + 16 * g) * lda + k0, lda);
          if constexpr (kTf32) {
            split_tf32(a, a_lo);
            wmma::mma_sync(acc[g], a_lo, b, acc[g]);
            wmma::mma_sync(acc[g], a, b_lo, acc[g]);
          }
          wmma::mma_sync(acc[g], a, b, acc[g]);
        }
      }
    }
#pragma unroll
    for (int g = 0; g < kTiles; ++g)
      if (g < G) wmma::store_matrix_sync(C + (r0 + 16 * g) * ldc + n0, acc[g], ldc, wmma::mem_row_major);
  }
}

// C[t, n] += sum_k A[t, k] * Bt[k, n] for the block's kRows rows and n in [0, N): A in shared memory
// (fp32, and its bf16 copy when tensor cores are used), Bt = W^T slice in global memory with row
// stride ldb. kTensorCores: bf16 operands (A16, Bt16). Otherwise fp32 (A, Bt): 3xTF32 on the tensor
// cores where the shapes fit WMMA, CUDA cores elsewhere (e.g. the last layer, width 1).
template <int kRows, bool kTensorCores>
__device__ void gemm_acc(const float* A, const __nv_bfloat16* A16, int lda, int K, const float* Bt,
                         const __nv_bfloat16* Bt16, int64_t ldb, int N, float* C, int ldc) {
  if constexpr (kTensorCores) {
    if (K % 16 == 0 && N % 16 == 0 && ldb % 8 == 0 && lda % 8 == 0)
      return wmma_gemm<kRows, false>(A16, lda, K, Bt16, ldb, N, C, ldc);
  } else {
    if (K % 8 == 0 && N % 16 == 0 && ldb % 4 == 0 && lda % 4 == 0)
      return wmma_gemm<kRows, true>(A, lda, K, Bt, ldb, N, C, ldc);
  }
  for (int i = threadIdx.x; i < kRows * N; i += blockDim.x) {
    const int t = i / N, n = i % N;
    float acc = 0.f;
    for (int k = 0; k < K; ++k) acc += A[t * lda + k] * __ldg(Bt + k * ldb + n);
    C[t * ldc + n] += acc;
  }
}

__device__ __forceinline__ const __nv_bfloat16* w16(const FusedLayer& L) {
  return static_cast<const __nv_bfloat16*>(L.weight_t16);
}

__device__ void to_bf16(const float* src, __nv_bfloat16* dst, int n) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) dst[i] = __float2bfloat16(src[i]);
}

// Value rows start from the bias; tangent rows and unused rows from zero.
template <int kRows, bool kGrad>
__device__ void fill_bias(float* dst, int ld, const float* bias, int64_t offset, int count) {
  constexpr int Q = kQueries<kRows, kGrad>;
  for (int i = threadIdx.x; i < kRows * count; i += blockDim.x) {
    const int r = i / count, c = i % count;
    dst[r * ld + c] = r < Q ? bias[offset + c] : 0.f;
  }
}

template <int kRows, bool kGrad>
__device__ void activate_rows(float* dst, int ld, int count, int act) {
  constexpr int Q = kQueries<kRows, kGrad>;
  for (int i = threadIdx.x; i < Q * count; i += blockDim.x) {
    const int t = i / count, c = i % count;
    const float v = dst[t * ld + c];
    if (kGrad) {
      const float d = activate_derivative(v, act);
      dst[(t + Q) * ld + c] *= d;
      dst[(t + 2 * Q) * ld + c] *= d;
    }
    dst[t * ld + c] = activate(v, act);
  }
}

// Layer l's accumulator in s.y gets its maps' samples and its activation, then becomes s.x.
template <int kRows, bool kGrad>
__device__ void finish_layer(const FusedProgram& P, int l, const float* coords, int64_t q0, int64_t N, int64_t total,
                             Smem& s, int ld) {
  const FusedLayer& L = P.layers[l];
  compute_taps<kRows, kGrad>(P, l, coords, q0, N, total, s.taps);
  __syncthreads();
  gather_layer<kRows>(P, l, s.taps, 0, static_cast<int>(L.out), s.y, ld);
  __syncthreads();
  activate_rows<kRows, kGrad>(s.y, ld, static_cast<int>(L.out), L.act);
  __syncthreads();
  float* tmp = s.x;
  s.x = s.y;
  s.y = tmp;
}

template <int kRows, bool kTensorCores, bool kGrad>
__global__ void __launch_bounds__(kThreads<kRows>) fused_decode_kernel(FusedProgram P, const float* __restrict__ coords,
                                                               float* __restrict__ out, int64_t N, int64_t total,
                                                               int ld, int tap_maps) {
  static_assert(!kGrad || kRows == 16, "tangents: 5 queries x 3 rows in one 16-row tile");
  unsigned char* raw = dynamic_shared_memory();
  Smem s;
  s.taps = reinterpret_cast<RowTaps*>(raw);
  s.x = reinterpret_cast<float*>(s.taps + tap_maps * kRows);
  s.y = s.x + kRows * ld;
  s.chunk = s.y + kRows * ld;
  s.x16 = reinterpret_cast<__nv_bfloat16*>(s.chunk + kRows * kKC);
  s.chunk16 = s.x16 + kRows * ld;
  constexpr int Q = kQueries<kRows, kGrad>;
  const int64_t q0 = static_cast<int64_t>(blockIdx.x) * Q;
  int width = 0;  // of the layer held in s.x

  for (int l = 0; l < P.num_layers;) {
    const FusedLayer& L = P.layers[l];
    const bool streamed = L.out > kNarrow;
    if (!streamed) {  // the whole layer in s.y, then it becomes s.x
      fill_bias<kRows, kGrad>(s.y, ld, L.bias, 0, static_cast<int>(L.out));
      __syncthreads();
      if (L.weight) {
        if (kTensorCores) to_bf16(s.x, s.x16, kRows * ld), __syncthreads();
        gemm_acc<kRows, kTensorCores>(s.x, s.x16, ld, width, L.weight_t, w16(L), L.out, static_cast<int>(L.out), s.y, ld);
        __syncthreads();
      }
      finish_layer<kRows, kGrad>(P, l, coords, q0, N, total, s, ld);
      width = static_cast<int>(L.out);
      l += 1;
      continue;
    }
    // Streamed pair: layer l (wide) produced kKC channels at a time into layer l + 1's accumulator.
    const FusedLayer& Nx = P.layers[l + 1];
    fill_bias<kRows, kGrad>(s.y, ld, Nx.bias, 0, static_cast<int>(Nx.out));
    if (kTensorCores && L.weight) to_bf16(s.x, s.x16, kRows * ld);
    compute_taps<kRows, kGrad>(P, l, coords, q0, N, total, s.taps);
    __syncthreads();
    for (int64_t c0 = 0; c0 < L.out; c0 += kKC) {
      const int count = static_cast<int>(L.out - c0 < kKC ? L.out - c0 : kKC);
      fill_bias<kRows, kGrad>(s.chunk, kKC, L.bias, c0, count);
      __syncthreads();
      if (L.weight) {
        gemm_acc<kRows, kTensorCores>(s.x, s.x16, ld, width, L.weight_t + c0, w16(L) ? w16(L) + c0 : nullptr, L.out,
                                      count, s.chunk, kKC);
        __syncthreads();
      }
      gather_layer<kRows>(P, l, s.taps, c0, count, s.chunk, kKC);
      __syncthreads();
      activate_rows<kRows, kGrad>(s.chunk, kKC, count, L.act);
      __syncthreads();
      if (kTensorCores) to_bf16(s.chunk, s.chunk16, kRows * kKC), __syncthreads();
      gemm_acc<kRows, kTensorCores>(s.chunk, s.chunk16, kKC, count, Nx.weight_t + c0 * Nx.out,
                                    w16(Nx) ? w16(Nx) + c0 * Nx.out : nullptr, Nx.out, static_cast<int>(Nx.out), s.y, ld);
      __syncthreads();
    }
    finish_layer<kRows, kGrad>(P, l + 1, coords, q0, N, total, s, ld);
    width = static_cast<int>(Nx.out);
    l += 2;
  }
  for (int r = threadIdx.x; r < kRows; r += blockDim.x) {
    const int t = r % Q, role = r / Q;
    if (role > 2 || q0 + t >= total) continue;
    if (kGrad) {
      out[3 * (q0 + t) + role] = s.x[r * ld];
    } else {
      out[q0 + t] = s.x[r * ld];
    }
  }
}

template <int kRows, bool kTensorCores, bool kGrad>
void launch(const FusedProgram& program, const float* coords, float* out, int64_t N, int64_t total, int ld,
            int tap_maps, cudaStream_t s) {
  constexpr int Q = kQueries<kRows, kGrad>;
  const size_t smem = smem_bytes(kRows, ld, tap_maps, kTensorCores);
  const unsigned blocks = static_cast<unsigned>((total + Q - 1) / Q);
  const auto kernel = fused_decode_kernel<kRows, kTensorCores, kGrad>;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  LAUNCH(kernel, blocks, kThreads<kRows>, smem, s)(program, coords, out, N, total, ld, tap_maps);
}

// Row stride of x and y: the widest layer kept whole, rounded up to the WMMA tile.
int row_stride(const FusedProgram& p) {
  int64_t ld = 16;
  for (int l = 0; l < p.num_layers; ++l)
    if (p.layers[l].out <= kNarrow && p.layers[l].out > ld) ld = p.layers[l].out;
  return static_cast<int>((ld + 15) / 16 * 16);
}

// The most maps feeding one layer (their taps are kept for the layer).
int tap_maps(const FusedProgram& p) {
  int most = 0;
  for (int l = 0; l < p.num_layers; ++l) {
    int count = 0;
    for (int m = 0; m < p.num_maps; ++m) count += p.maps[m].layer == l;
    most = count > most ? count : most;
  }
  return most;
}

}  // namespace

int64_t fused_decode_cuda_narrow_limit() { return kNarrow; }

int fused_decode_cuda_rows(const FusedProgram& program, bool tensor_cores, bool with_grad) {
  if (with_grad) return 16;
  int device = 0, limit = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  // A benchmarking knob, not an interface: INFINIDEPTH_CUDA_MAX_ROWS=16|32 caps the rows, so that one
  // GPU session can time every tile size (benchmarks/gpu.sh, stage cuda). Big blocks leave less
  // of the SM's 256 KB to the L1 cache the gathers and weights go through.
  const char* cap = std::getenv("INFINIDEPTH_CUDA_MAX_ROWS");
  const int most = cap ? std::atoi(cap) : 64;
  const int ld = row_stride(program), maps = tap_maps(program);
  for (int rows : {64, 32})
    if (rows <= most && smem_bytes(rows, ld, maps, tensor_cores) <= static_cast<size_t>(limit)) return rows;
  return 16;
}

void fused_decode_cuda(const FusedProgram& program, const float* coords, float* out, int64_t B, int64_t N,
                       bool tensor_cores, bool with_grad, void* stream) {
  const int64_t total = B * N;
  if (total == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  const int ld = row_stride(program), maps = tap_maps(program);
  if (with_grad) {  // in fp32 whatever the precision: bf16 tangents are off by up to 20% (see fused_decode.h)
    launch<16, false, true>(program, coords, out, N, total, ld, maps, s);
    return;
  }
  switch (fused_decode_cuda_rows(program, tensor_cores, with_grad)) {
    case 64:
      return tensor_cores ? launch<64, true, false>(program, coords, out, N, total, ld, maps, s)
                          : launch<64, false, false>(program, coords, out, N, total, ld, maps, s);
    case 32:
      return tensor_cores ? launch<32, true, false>(program, coords, out, N, total, ld, maps, s)
                          : launch<32, false, false>(program, coords, out, N, total, ld, maps, s);
    default:
      return tensor_cores ? launch<16, true, false>(program, coords, out, N, total, ld, maps, s)
                          : launch<16, false, false>(program, coords, out, N, total, ld, maps, s);
  }
}

}  // namespace infinidepth
