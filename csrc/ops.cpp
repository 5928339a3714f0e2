// Op schemas (torch.ops.infinidepth.*) and their CPU implementations.
#include <torch/library.h>
#include <ATen/ATen.h>

#include "bilinear_gather.h"

namespace infinidepth {

// Shared checks; Python validates user input first, these guard direct callers of torch.ops.
void check_gather_args(const at::Tensor& feat, const at::Tensor& coords) {
  TORCH_CHECK(feat.dim() == 4, "bilinear_gather: feat must be [B, C, H, W], got ", feat.sizes());
  TORCH_CHECK(coords.dim() == 3 && coords.size(2) == 2, "bilinear_gather: coords must be [B, N, 2], got ",
              coords.sizes());
  TORCH_CHECK(feat.size(0) == coords.size(0), "bilinear_gather: batch of feat (", feat.size(0),
              ") and coords (", coords.size(0), ") differ");
  TORCH_CHECK(feat.scalar_type() == at::kFloat && coords.scalar_type() == at::kFloat,
              "bilinear_gather: float32 tensors expected");
  TORCH_CHECK(feat.device() == coords.device(), "bilinear_gather: feat and coords on different devices");
}

namespace {

at::Tensor bilinear_gather_cpu_impl(const at::Tensor& feat, const at::Tensor& coords) {
  check_gather_args(feat, coords);
  const auto B = feat.size(0), C = feat.size(1), H = feat.size(2), W = feat.size(3), N = coords.size(1);
  const at::Tensor f = feat.permute({0, 2, 3, 1}).contiguous();
  const at::Tensor q = coords.contiguous();
  at::Tensor out = at::empty({B, N, C}, feat.options());
  bilinear_gather_cpu(f.data_ptr<float>(), q.data_ptr<float>(), out.data_ptr<float>(), B, H, W, C, N);
  return out;
}

}  // namespace

TORCH_LIBRARY(infinidepth, m) {
  m.def("bilinear_gather(Tensor feat, Tensor coords) -> Tensor");
}

TORCH_LIBRARY_IMPL(infinidepth, CPU, m) {
  m.impl("bilinear_gather", &bilinear_gather_cpu_impl);
}

}  // namespace infinidepth
