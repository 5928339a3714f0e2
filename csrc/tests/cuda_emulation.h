// A host emulation of the part of CUDA that csrc/*.cu kernels use, so that CI (no GPU) runs the
// kernels' own code, index arithmetic and synchronisation included, against the reference.
//
// Compile a .cu as C++20 with -DINFINIDEPTH_CUDA_EMULATION (tests/test_cuda_emulated.py does).
// Every CUDA thread of a block is a std::thread; __syncthreads is a barrier over them, so a
// missing barrier shows up as a race and a barrier not reached by every thread as a hang (both
// undefined on a GPU too). Shared memory is refilled with NaN bytes before each block, so a read of
// memory no thread wrote comes out as NaN. Blocks run one after another.
//
// WMMA (nvcuda::wmma, the 16x16x16 shapes) keeps each fragment whole in every lane: loads and
// mma_sync are computed by every lane alike, store_matrix_sync is written once per warp between
// two warp barriers, as the warp-wide "_sync" operations behave. Products of bf16 operands are
// exact in fp32 and summed in fp32, as on the tensor cores (the order of the sums may differ).
//
// Not emulated: timing, memory-model subtleties beyond barriers, occupancy, shared-memory limits
// (launchers still check them against the device's when run on a GPU).
#pragma once

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <math.h>
#include <memory>
#include <new>
#include <thread>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

using cudaStream_t = void*;
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin };

namespace cuda_emulation {

// The emulated device's opt-in shared memory per block (an H100's unless a test sets another), and
// the error of the last launch: 0; 1 when it asked for more shared memory than that; 2 when a WMMA
// load or store broke the API's rules (a 256-bit aligned pointer, a leading dimension that is a
// multiple of 16 bytes), which on a GPU is undefined behaviour.
inline int max_shared_per_block = 232448;
inline std::atomic<int> last_error = 0;

struct Block {
  std::unique_ptr<std::barrier<>> all;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  // Exactly the bytes the launch asks for (an overflow reaches AddressSanitizer's red zone), at a
  // 256-byte aligned address as on a GPU (WMMA needs 32).
  struct Free {
    void operator()(unsigned char* p) const { ::operator delete(p, std::align_val_t(256)); }
  };
  std::unique_ptr<unsigned char, Free> shared;
};

inline thread_local Block* current = nullptr;

}  // namespace cuda_emulation

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

template <class F>
inline int cudaFuncSetAttribute(F, cudaFuncAttribute, int) { return 0; }
inline int cudaGetDevice(int* device) { *device = 0; return 0; }
inline int cudaDeviceGetAttribute(int* value, cudaDeviceAttr, int) {
  *value = cuda_emulation::max_shared_per_block;
  return 0;
}

inline void __syncthreads() { cuda_emulation::current->all->arrive_and_wait(); }
inline void __syncwarp() { cuda_emulation::current->warps[threadIdx.x / 32]->arrive_and_wait(); }
inline unsigned char* dynamic_shared_memory() { return cuda_emulation::current->shared.get(); }

struct alignas(16) float4 {
  float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

template <class T>
inline T __ldg(const T* p) { return *p; }

struct __nv_bfloat16 {
  uint16_t bits;
};

inline __nv_bfloat16 __float2bfloat16(float f) {  // round to nearest even, NaN kept NaN
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return {static_cast<uint16_t>((u >> 16) | 0x40)};
  u += 0x7FFF + ((u >> 16) & 1);
  return {static_cast<uint16_t>(u >> 16)};
}

inline float __bfloat162float(__nv_bfloat16 h) {
  const uint32_t u = static_cast<uint32_t>(h.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// tf32 of an fp32 value, rounded to nearest with ties away from zero (cvt.rna.tf32.f32).
inline float wmma_float_to_tf32(float v) {
  if (!std::isfinite(v)) return v;
  uint32_t u;
  std::memcpy(&u, &v, 4);
  u = (u + 0x1000u) & 0xFFFFE000u;
  std::memcpy(&v, &u, 4);
  return v;
}

namespace nvcuda {
namespace wmma {

inline float __float_to_tf32(float v) { return wmma_float_to_tf32(v); }

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

namespace precision {
struct tf32 {};  // fp32 in memory and registers; the tensor cores read 10 bits of mantissa
}  // namespace precision

// Every lane holds the whole tile, row-major, in x[0, num_elements): element-wise code over a
// fragment (as CUDA code may write: for i < num_elements, f.x[i] = ...) means the same here.
template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static constexpr int rows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int cols = std::is_same_v<Use, matrix_a> ? K : N;
  static constexpr int num_elements = rows * cols;
  float x[rows * cols];
};

template <class T>
inline void check(const T* p, unsigned ld) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0 || (ld * sizeof(T)) % 16 != 0) cuda_emulation::last_error = 2;
}

inline float to_float(float x) { return x; }
inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// Memory holds T, or float for tf32 fragments.
template <class T>
using stored_t = std::conditional_t<std::is_same_v<T, precision::tf32>, float, T>;

template <class Use, int M, int N, int K, class T, class Layout>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const stored_t<T>* p, unsigned ld) {
  check(p, ld);
  using F = fragment<Use, M, N, K, T, Layout>;
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c)
      f.x[r * F::cols + c] = to_float(std::is_same_v<Layout, col_major> ? p[c * ld + r] : p[r * ld + c]);
}

template <int M, int N, int K>
inline void load_matrix_sync(fragment<accumulator, M, N, K, float>& f, const float* p, unsigned ld, layout_t layout) {
  check(p, ld);
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) f.x[r * N + c] = layout == mem_col_major ? p[c * ld + r] : p[r * ld + c];
}

template <int M, int N, int K>
inline void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ld, layout_t layout) {
  check(p, ld);
  __syncwarp();  // every lane has finished reading what is about to be overwritten
  if (threadIdx.x % 32 == 0)
    for (int r = 0; r < M; ++r)
      for (int c = 0; c < N; ++c) (layout == mem_col_major ? p[c * ld + r] : p[r * ld + c]) = f.x[r * N + c];
  __syncwarp();  // and every lane sees the result
}

// What the tensor cores read of an fp32 value in a tf32 operand: its top 19 bits.
inline float tf32_operand(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  u &= 0xFFFFE000u;
  std::memcpy(&v, &u, 4);
  return v;
}
inline float operand(float v, precision::tf32) { return tf32_operand(v); }
template <class T>
inline float operand(float v, T) { return v; }

template <int M, int N, int K, class T, class LA, class LB>
inline void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, T, LA>& a,
                     const fragment<matrix_b, M, N, K, T, LB>& b, const fragment<accumulator, M, N, K, float>& c) {
  float out[M * N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float acc = c.x[i * N + j];
      for (int k = 0; k < K; ++k) acc += operand(a.x[i * K + k], T{}) * operand(b.x[k * N + j], T{});
      out[i * N + j] = acc;
    }
  std::memcpy(d.x, out, sizeof(out));
}

}  // namespace wmma
}  // namespace nvcuda

namespace cuda_emulation {

// kernel<<<grid, block, shared_bytes, stream>>>(args...) becomes Launch(kernel, grid, block,
// shared_bytes, stream)(args...): the grid's blocks in order, each with block.x threads.
template <class Kernel>
struct Launch {
  Kernel kernel;
  dim3 grid, block;
  size_t shared_bytes;
  Launch(Kernel k, dim3 g, dim3 b, size_t s, cudaStream_t) : kernel(k), grid(g), block(b), shared_bytes(s) {}

  template <class... Args>
  void operator()(Args... args) const {
    if (shared_bytes > static_cast<size_t>(max_shared_per_block)) {  // a GPU refuses the launch
      last_error = 1;
      return;
    }
    const unsigned threads = block.x;
    Block state;
    state.all = std::make_unique<std::barrier<>>(threads);
    for (unsigned w = 0; w < (threads + 31) / 32; ++w)
      state.warps.push_back(std::make_unique<std::barrier<>>(threads - 32 * w < 32 ? threads - 32 * w : 32));
    state.shared.reset(static_cast<unsigned char*>(::operator new(shared_bytes ? shared_bytes : 1, std::align_val_t(256))));
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        current = &state;
        threadIdx = dim3(t);
        blockDim = block;
        gridDim = grid;
        for (unsigned b = 0; b < grid.x; ++b) {
          if (t == 0) std::memset(state.shared.get(), 0xFF, shared_bytes);  // NaN floats
          state.all->arrive_and_wait();
          blockIdx = dim3(b);
          kernel(args...);
          state.all->arrive_and_wait();
        }
      });
    }
    for (std::thread& th : pool) th.join();
  }
};

}  // namespace cuda_emulation
