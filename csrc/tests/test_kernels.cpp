// C++ tests of the CPU kernels against ATen's grid_sampler (the same function the Python
// reference uses), on random shapes including queries on and beyond the borders.
#include <cmath>
#include <cstdio>
#include <random>

#include <ATen/ATen.h>

#include "bilinear_gather.h"

namespace {

int failures = 0;

void check(bool ok, const char* what, double err) {
  std::printf("%s %s (max abs err %.3g)\n", ok ? "PASS" : "FAIL", what, err);
  if (!ok) ++failures;
}

at::Tensor reference(const at::Tensor& feat, const at::Tensor& coords) {
  // grid_sample wants (x, y) in a [B, 1, N, 2] grid; mode 0 = bilinear, padding 0 = zeros.
  const at::Tensor grid = coords.flip({-1}).unsqueeze(1);
  return at::grid_sampler(feat, grid, 0, 0, false).select(2, 0).transpose(1, 2).contiguous();
}

at::Tensor gather(const at::Tensor& feat, const at::Tensor& coords) {
  const auto B = feat.size(0), C = feat.size(1), H = feat.size(2), W = feat.size(3), N = coords.size(1);
  const at::Tensor f = feat.permute({0, 2, 3, 1}).contiguous();
  at::Tensor out = at::empty({B, N, C}, feat.options());
  infinidepth::bilinear_gather_cpu(f.data_ptr<float>(), coords.data_ptr<float>(), out.data_ptr<float>(), B, H, W, C, N);
  return out;
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  for (int trial = 0; trial < 20; ++trial) {
    const int64_t B = 1 + rng() % 3, C = 1 + rng() % 70, H = 1 + rng() % 20, W = 1 + rng() % 20, N = rng() % 500;
    at::manual_seed(trial);
    const at::Tensor feat = at::randn({B, C, H, W});
    at::Tensor coords = at::rand({B, N, 2}) * 2.6 - 1.3;  // inside, on and beyond the borders
    if (N >= 4) {
      coords.select(1, 0).fill_(-1.f);
      coords.select(1, 1).fill_(1.f);
      coords.select(1, 2).select(1, 0).fill_(1e30f);  // far away: must read zeros, not crash
    }
    const double err = (gather(feat, coords) - reference(feat, coords)).abs().max().item<double>();
    char what[128];
    std::snprintf(what, sizeof what, "bilinear_gather B=%lld C=%lld H=%lld W=%lld N=%lld", (long long)B, (long long)C,
                  (long long)H, (long long)W, (long long)N);
    check(err < 1e-5, what, err);
  }
  // Pixel centres read the pixel exactly.
  const at::Tensor feat = at::randn({1, 3, 4, 5});
  at::Tensor centre = at::tensor({(2 + 0.5f) / 4 * 2 - 1, (3 + 0.5f) / 5 * 2 - 1}).view({1, 1, 2});
  const double err = (gather(feat, centre).view({3}) - feat.select(0, 0).select(1, 2).select(1, 3)).abs().max().item<double>();
  check(err < 1e-6, "pixel centre reads its pixel", err);
  std::printf("%d failure(s)\n", failures);
  return failures == 0 ? 0 : 1;
}
