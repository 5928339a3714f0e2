// Stratified inverse-CDF sampling of grid cells (infinidepth/ops/inverse_cdf.py has the contract).
//
// Inputs are integer weights [B, M] (M = H * W cells), quantised once in Python so that prefix sums
// are exact in any order; sample j of an image goes to the first cell whose inclusive prefix sum
// exceeds t_j = floor((j + 0.5) * T / n) (IEEE float64), jittered by a counter-based hash. Every
// backend therefore picks the same cells. No torch or CUDA includes: .cu files stay cheap to compile.
#pragma once
#include <cstddef>
#include <cstdint>
#include <math.h>  // nextafterf, on the host and the device

#include "host_device.h"

namespace infinidepth {

// lowbias32 (C. Wellons' hash prospector): a full-avalanche 32-bit mixer.
INFINIDEPTH_HOST_DEVICE uint32_t mix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x7feb352dU;
  h ^= h >> 15;
  h *= 0x846ca68bU;
  h ^= h >> 16;
  return h;
}

// Per-image stream of the jitter hash.
INFINIDEPTH_HOST_DEVICE uint32_t jitter_stream(uint32_t seed, uint32_t image) { return mix32(seed ^ mix32(image)); }

// Uniform in [0, 1) with 24 bits, for sample j and axis 0 (y) or 1 (x).
INFINIDEPTH_HOST_DEVICE float jitter_uniform(uint32_t stream, int64_t j, int axis) {
  const uint32_t h = mix32(stream ^ mix32(static_cast<uint32_t>(2 * j + axis)));
  return static_cast<float>(h >> 8) * (1.0f / 16777216.0f);
}

// The target of sample j in [0, total).
INFINIDEPTH_HOST_DEVICE int64_t sample_target(int64_t j, int64_t total, int64_t n) {
  const double t = (static_cast<double>(j) + 0.5) * static_cast<double>(total) / static_cast<double>(n);
  const int64_t target = static_cast<int64_t>(t);  // t >= 0: truncation is floor
  return target < total ? target : total - 1;
}

// First index i in [0, M) with cdf[i] > target (cdf non-decreasing, cdf[M - 1] > target).
INFINIDEPTH_HOST_DEVICE int64_t upper_bound_index(const int64_t* cdf, int64_t M, int64_t target) {
  int64_t lo = 0, hi = M;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (cdf[mid] <= target) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// Normalised coordinate of `index + u` (u in [0, 1)) along an axis of `size` cells, kept inside the
// cell: at or above its lower edge and strictly below its upper one, both edges in float64. In
// float32, index + u rounds up to index + 1 for u near 1 once index is in the thousands, and an edge
// is rarely a float32, so a coordinate just above it can round to just below it; such coordinates
// go to the nearest float32 inside the cell.
INFINIDEPTH_HOST_DEVICE float cell_coordinate(int64_t index, float u, int64_t size) {
  const float c = (static_cast<float>(index) + u) / static_cast<float>(size) * 2.f - 1.f;
  const double lo = static_cast<double>(index) / static_cast<double>(size) * 2.0 - 1.0;
  const double hi = static_cast<double>(index + 1) / static_cast<double>(size) * 2.0 - 1.0;
  if (static_cast<double>(c) < lo) {
    const float f = static_cast<float>(lo);
    return static_cast<double>(f) < lo ? nextafterf(f, 2.f) : f;
  }
  if (static_cast<double>(c) >= hi) {
    const float f = static_cast<float>(hi);
    return static_cast<double>(f) >= hi ? nextafterf(f, -2.f) : f;
  }
  return c;
}

// Writes sample j of image b (of n per image) placed at position `pos` of the CDF: its cell (`pos`, or
// `order[pos]` when the cells entered the CDF in that order) of an H x W grid, and its normalised
// (y, x), jittered inside the cell or at its centre.
INFINIDEPTH_HOST_DEVICE void write_sample(int64_t pos, const int64_t* order, int64_t j, int64_t b, int64_t n, int64_t H,
                                          int64_t W, uint32_t stream, bool jitter, float* coords, int64_t* cells) {
  const int64_t cell = order ? order[pos] : pos;
  const float uy = jitter ? jitter_uniform(stream, j, 0) : 0.5f;
  const float ux = jitter ? jitter_uniform(stream, j, 1) : 0.5f;
  const int64_t o = b * n + j;
  cells[o] = cell;
  coords[2 * o] = cell_coordinate(cell / W, uy, H);
  coords[2 * o + 1] = cell_coordinate(cell % W, ux, W);
}

// CPU: weights [B, M] int64 (laid out in `order`, [M], or row by row when it is null) -> coords
// [B, n, 2] (y, x), cells [B, n].
void inverse_cdf_sample_cpu(const int64_t* weights, const int64_t* order, int64_t B, int64_t H, int64_t W, int64_t n,
                            uint32_t seed, bool jitter, float* coords, int64_t* cells);

// CUDA: scratch bytes the scan needs for M cells, then the sampler (stream is a cudaStream_t as void*).
// cdf is [M] int64 scratch, reused per image.
size_t inverse_cdf_scan_bytes(int64_t M);
void inverse_cdf_sample_cuda(const int64_t* weights, const int64_t* order, int64_t B, int64_t H, int64_t W, int64_t n,
                             uint32_t seed, bool jitter, int64_t* cdf, void* scratch, size_t scratch_bytes,
                             float* coords, int64_t* cells, void* stream);

}  // namespace infinidepth
