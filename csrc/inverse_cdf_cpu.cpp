// CPU inverse-CDF sampler: a two-pass parallel scan of the integer weights (exact in int64, so the
// split across threads cannot change a result), then the samples in parallel blocks: a binary
// search for a block's first sample, then a forward walk (targets only grow with j), so that the
// placement costs O(n + M) rather than O(n log M).
#include <algorithm>
#include <vector>

#include <ATen/Parallel.h>

#include "inverse_cdf.h"

namespace infinidepth {

namespace {

// Inclusive prefix sums of w[0, M) into cdf: per-chunk sums, their exclusive scan, then each chunk
// scans itself from its offset.
void parallel_inclusive_scan(const int64_t* w, int64_t M, int64_t* cdf) {
  constexpr int64_t kChunk = 1 << 16;
  const int64_t chunks = (M + kChunk - 1) / kChunk;
  std::vector<int64_t> offset(chunks + 1, 0);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      int64_t s = 0;
      for (int64_t i = c * kChunk; i < std::min(M, (c + 1) * kChunk); ++i) s += w[i];
      offset[c + 1] = s;
    }
  });
  for (int64_t c = 0; c < chunks; ++c) offset[c + 1] += offset[c];
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      int64_t s = offset[c];
      for (int64_t i = c * kChunk; i < std::min(M, (c + 1) * kChunk); ++i) cdf[i] = s += w[i];
    }
  });
}

}  // namespace

void inverse_cdf_sample_cpu(const int64_t* weights, const int64_t* order, int64_t B, int64_t H, int64_t W, int64_t n,
                            uint32_t seed, bool jitter, float* coords, int64_t* cells) {
  const int64_t M = H * W;
  std::vector<int64_t> cdf(M);
  for (int64_t b = 0; b < B; ++b) {
    parallel_inclusive_scan(weights + b * M, M, cdf.data());
    const int64_t total = cdf[M - 1];
    const uint32_t stream = jitter_stream(seed, static_cast<uint32_t>(b));
    at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
      int64_t pos = upper_bound_index(cdf.data(), M, sample_target(begin, total, n));
      for (int64_t j = begin; j < end; ++j) {
        const int64_t target = sample_target(j, total, n);
        while (cdf[pos] <= target) ++pos;  // first position whose prefix sum exceeds the target
        write_sample(pos, order, j, b, n, H, W, stream, jitter, coords, cells);
      }
    });
  }
}

}  // namespace infinidepth
