// CUDA implementations of the op schemas declared in ops.cpp (host glue; kernels in *.cu).
#include <torch/library.h>
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "bilinear_gather.h"
#include "fused_decode.h"
#include "inverse_cdf.h"

namespace infinidepth {

void check_gather_args(const at::Tensor& feat, const at::Tensor& coords);
const int64_t* check_inverse_cdf_args(const at::Tensor& weights, const std::optional<at::Tensor>& order, int64_t height,
                                      int64_t width, int64_t n, int64_t seed);
FusedProgram make_program(const at::Tensor& coords, const std::vector<at::Tensor>& maps, at::IntArrayRef map_layer,
                          const std::vector<std::optional<at::Tensor>>& weights, const std::vector<at::Tensor>& biases,
                          at::IntArrayRef acts, std::vector<at::Tensor>& keep_alive);

namespace {

std::tuple<at::Tensor, at::Tensor> inverse_cdf_sample_cuda_impl(const at::Tensor& weights, int64_t height, int64_t width,
                                                                int64_t n, int64_t seed, bool jitter,
                                                                const std::optional<at::Tensor>& order) {
  const c10::cuda::CUDAGuard guard(weights.device());
  const int64_t* layout = check_inverse_cdf_args(weights, order, height, width, n, seed);
  const at::Tensor w = weights.contiguous();
  const int64_t B = w.size(0), M = w.size(1);
  at::Tensor coords = at::empty({B, n, 2}, w.options().dtype(at::kFloat));
  at::Tensor cells = at::empty({B, n}, w.options());
  if (n == 0) return {coords, cells};
  at::Tensor cdf = at::empty({M}, w.options());
  const size_t bytes = inverse_cdf_scan_bytes(M);
  at::Tensor scratch = at::empty({static_cast<int64_t>(bytes) + 1}, w.options().dtype(at::kByte));
  inverse_cdf_sample_cuda(w.data_ptr<int64_t>(), layout, B, height, width, n, static_cast<uint32_t>(seed), jitter,
                          cdf.data_ptr<int64_t>(), scratch.data_ptr(), bytes, coords.data_ptr<float>(),
                          cells.data_ptr<int64_t>(), c10::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {coords, cells};
}

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

at::Tensor fused_decode_cuda_run(const at::Tensor& coords, at::TensorList maps, at::IntArrayRef map_layer,
                                  const c10::List<std::optional<at::Tensor>>& weights, at::TensorList biases,
                                  at::IntArrayRef acts, c10::string_view precision, bool with_grad) {
  TORCH_CHECK(precision == "fp32" || precision == "bf16", "fused_decode: precision must be fp32 or bf16, got '",
              precision, "'");
  const bool tensor_cores = precision == "bf16" && !with_grad;  // tangents stay fp32 (fused_decode.h)
  const c10::cuda::CUDAGuard guard(coords.device());
  std::vector<at::Tensor> keep;
  std::vector<std::optional<at::Tensor>> w(weights.begin(), weights.end());
  const at::Tensor q = coords.contiguous();
  FusedProgram p = make_program(q, maps.vec(), map_layer, w, biases.vec(), acts, keep);
  const int64_t narrow = fused_decode_cuda_narrow_limit();
  for (int l = 0; l < p.num_layers; ++l) {
    FusedLayer& L = p.layers[l];
    if (L.out > narrow) {
      TORCH_CHECK(l + 1 < p.num_layers && p.layers[l + 1].out <= narrow, "fused_decode (cuda): layer ", l,
                  " is wider than ", narrow, " and must feed a layer of at most that width");
    }
    TORCH_CHECK(!(l > 0 && p.layers[l - 1].out > narrow && L.out > narrow), "fused_decode (cuda): two wide layers in a row");
    if (L.weight) {
      // a fresh allocation (the caching allocator's alignment), never a view of the caller's storage: a
      // weight passed as a transposed view would make .contiguous() return it as is, at a storage offset
      // that need not be the 32 bytes wmma::load_matrix_sync requires
      const at::Tensor wt = w[l]->t().clone(at::MemoryFormat::Contiguous);
      keep.push_back(wt);
      L.weight_t = wt.data_ptr<float>();
      if (tensor_cores) {
        const at::Tensor wt16 = wt.to(at::kBFloat16);
        keep.push_back(wt16);
        L.weight_t16 = wt16.data_ptr();
      }
    }
  }
  at::Tensor out = with_grad ? at::empty({q.size(0), q.size(1), 3}, q.options()) : at::empty({q.size(0), q.size(1)}, q.options());
  fused_decode_cuda(p, q.data_ptr<float>(), out.data_ptr<float>(), q.size(0), q.size(1), tensor_cores, with_grad,
                    c10::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor fused_decode_cuda_impl(const at::Tensor& coords, at::TensorList maps, at::IntArrayRef map_layer,
                                  const c10::List<std::optional<at::Tensor>>& weights, at::TensorList biases,
                                  at::IntArrayRef acts, c10::string_view precision) {
  return fused_decode_cuda_run(coords, maps, map_layer, weights, biases, acts, precision, false);
}

at::Tensor fused_decode_with_grad_cuda_impl(const at::Tensor& coords, at::TensorList maps, at::IntArrayRef map_layer,
                                            const c10::List<std::optional<at::Tensor>>& weights, at::TensorList biases,
                                            at::IntArrayRef acts, c10::string_view precision) {
  return fused_decode_cuda_run(coords, maps, map_layer, weights, biases, acts, precision, true);
}

}  // namespace

TORCH_LIBRARY_IMPL(infinidepth, CUDA, m) {
  m.impl("bilinear_gather", &bilinear_gather_cuda_impl);
  m.impl("fused_decode", &fused_decode_cuda_impl);
  m.impl("fused_decode_with_grad", &fused_decode_with_grad_cuda_impl);
  m.impl("inverse_cdf_sample", &inverse_cdf_sample_cuda_impl);
}

}  // namespace infinidepth
