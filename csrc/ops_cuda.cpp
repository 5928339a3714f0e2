// CUDA implementations of the op schemas declared in ops.cpp (host glue; kernels in *.cu).
#include <torch/library.h>
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "bilinear_gather.h"

namespace infinidepth {

void check_gather_args(const at::Tensor& feat, const at::Tensor& coords);

namespace {

at::Tensor bilinear_gather_cuda_impl(const at::Tensor& feat, const at::Tensor& coords) {
  check_gather_args(feat, coords);
  const c10::cuda::CUDAGuard guard(feat.device());
  const auto B = feat.size(0), C = feat.size(1), H = feat.size(2), W = feat.size(3), N = coords.size(1);
  const at::Tensor f = feat.permute({0, 2, 3, 1}).contiguous();
  const at::Tensor q = coords.contiguous();
  at::Tensor out = at::empty({B, N, C}, feat.options());
  bilinear_gather_cuda(f.data_ptr<float>(), q.data_ptr<float>(), out.data_ptr<float>(), B, H, W, C, N,
                       c10::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(infinidepth, CUDA, m) {
  m.impl("bilinear_gather", &bilinear_gather_cuda_impl);
}

}  // namespace infinidepth
