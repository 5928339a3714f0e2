// Op schemas (torch.ops.infinidepth.*) and their CPU implementations.
#include <torch/library.h>
#include <ATen/ATen.h>

#include "bilinear_gather.h"
#include "cpu_math.h"
#include "fused_decode.h"
#include "inverse_cdf.h"

namespace infinidepth {

void fused_decode_cpu(const FusedProgram& prog, const std::vector<at::Tensor>& packed, const std::vector<bool>& bf16_layer,
                      const float* coords, float* out, int64_t B, int64_t N, bool with_grad);

template <typename T>
void gs_composite_cpu(const T* mean2d, const T* conic, const T* opacity, const T* color, const T* depth, int64_t N,
                      const int64_t* first, const int64_t* count, const int64_t* order, int64_t H, int64_t W,
                      int64_t tile, const T* background, T* out_rgb, T* out_depth, T* out_alpha);

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

// Python quantises and validates the weights (infinidepth/ops/inverse_cdf.py); this guards direct callers,
// and returns the layout's data (nullptr: row by row) once its cells are known to be in range.
const int64_t* check_inverse_cdf_args(const at::Tensor& weights, const std::optional<at::Tensor>& order, int64_t height,
                                      int64_t width, int64_t n, int64_t seed) {
  TORCH_CHECK(weights.dim() == 2 && weights.scalar_type() == at::kLong,
              "inverse_cdf_sample: weights must be int64 [B, H * W], got ", weights.sizes(), " ", weights.scalar_type());
  TORCH_CHECK(height > 0 && width > 0 && weights.size(1) == height * width, "inverse_cdf_sample: weights have ",
              weights.size(1), " cells, not ", height, " x ", width);
  TORCH_CHECK(n >= 0 && n <= (int64_t{1} << 30), "inverse_cdf_sample: n must be in [0, 2**30], got ", n);
  TORCH_CHECK(seed >= 0 && seed <= 0xFFFFFFFFLL, "inverse_cdf_sample: seed must be in [0, 2**32), got ", seed);
  if (!order) return nullptr;
  TORCH_CHECK(order->dim() == 1 && order->size(0) == weights.size(1) && order->scalar_type() == at::kLong &&
                  order->is_contiguous() && order->device() == weights.device(),
              "inverse_cdf_sample: order must be a contiguous int64 [", weights.size(1), "] on the weights' device, got ",
              order->sizes(), " ", order->scalar_type());
  const auto [lo, hi] = at::aminmax(*order);
  TORCH_CHECK(lo.item<int64_t>() >= 0 && hi.item<int64_t>() < weights.size(1),
              "inverse_cdf_sample: order holds cells outside [0, ", weights.size(1), ")");
  return order->data_ptr<int64_t>();
}

// Checks the program's tensors and fills the plain description the kernels read. Tensors that
// must outlive the call (contiguous copies) are appended to keep_alive.
FusedProgram make_program(const at::Tensor& coords, const std::vector<at::Tensor>& maps, at::IntArrayRef map_layer,
                          const std::vector<std::optional<at::Tensor>>& weights, const std::vector<at::Tensor>& biases,
                          at::IntArrayRef acts, std::vector<at::Tensor>& keep_alive) {
  TORCH_CHECK(coords.dim() == 3 && coords.size(2) == 2, "fused_decode: coords must be [B, N, 2], got ", coords.sizes());
  TORCH_CHECK(coords.scalar_type() == at::kFloat, "fused_decode: coords must be float32");
  const int L = static_cast<int>(biases.size());
  TORCH_CHECK(L >= 1 && L <= kMaxLayers, "fused_decode: 1 to ", kMaxLayers, " layers supported, got ", L);
  TORCH_CHECK(static_cast<int>(weights.size()) == L && static_cast<int>(acts.size()) == L,
              "fused_decode: weights, biases and acts must have one entry per layer");
  TORCH_CHECK(maps.size() == map_layer.size(), "fused_decode: one map_layer entry per map");
  TORCH_CHECK(static_cast<int>(maps.size()) <= kMaxMaps, "fused_decode: at most ", kMaxMaps, " maps");
  FusedProgram p{};
  p.num_layers = L;
  p.num_maps = static_cast<int>(maps.size());
  p.max_width = 0;
  int64_t prev = 0;
  for (int l = 0; l < L; ++l) {
    const at::Tensor b = biases[l].contiguous();
    keep_alive.push_back(b);
    TORCH_CHECK(b.dim() == 1 && b.scalar_type() == at::kFloat && b.device() == coords.device(),
                "fused_decode: bias ", l, " must be a float32 vector on the coords' device");
    FusedLayer& layer = p.layers[l];
    layer.bias = b.data_ptr<float>();
    layer.out = b.size(0);
    layer.in = prev;
    layer.act = static_cast<int>(acts[l]);
    TORCH_CHECK(layer.act >= kNone && layer.act <= kElu, "fused_decode: unknown activation code ", layer.act);
    if (weights[l].has_value() && weights[l]->defined()) {
      TORCH_CHECK(l > 0, "fused_decode: layer 0 takes no weight (it starts from the gathered maps)");
      const at::Tensor w = weights[l]->contiguous();
      keep_alive.push_back(w);
      TORCH_CHECK(w.dim() == 2 && w.size(0) == layer.out && w.size(1) == prev && w.scalar_type() == at::kFloat,
                  "fused_decode: weight ", l, " must be float32 [", layer.out, ", ", prev, "], got ", w.sizes());
      layer.weight = w.data_ptr<float>();
    } else {
      TORCH_CHECK(l == 0, "fused_decode: layer ", l, " needs a weight");
      layer.weight = nullptr;
    }
    p.max_width = std::max(p.max_width, layer.out);
    prev = layer.out;
  }
  TORCH_CHECK(prev == 1, "fused_decode: the last layer must have width 1, got ", prev);
  for (size_t m = 0; m < maps.size(); ++m) {
    const at::Tensor& t = maps[m];
    TORCH_CHECK(t.dim() == 4 && t.size(0) == coords.size(0) && t.scalar_type() == at::kFloat && t.is_contiguous() &&
                    t.device() == coords.device(),
                "fused_decode: map ", m, " must be a contiguous float32 channels-last [B, H, W, C] tensor with the "
                "coords' batch and device, got ", t.sizes());
    const int l = static_cast<int>(map_layer[m]);
    TORCH_CHECK(l >= 0 && l < L, "fused_decode: map ", m, " feeds layer ", l, " which does not exist");
    TORCH_CHECK(t.size(3) == p.layers[l].out, "fused_decode: map ", m, " has ", t.size(3), " channels, layer ", l,
                " has width ", p.layers[l].out);
    p.maps[m] = FusedMap{t.data_ptr<float>(), t.size(1), t.size(2), t.size(3), l};
  }
  return p;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> knn_tree_cpu(const at::Tensor& points, int64_t leaf);
at::Tensor knn_mean_distance_cpu(const at::Tensor& coords, const at::Tensor& boxes, int64_t leaf, int64_t k,
                                 int64_t begin, int64_t end);

namespace {

at::Tensor fused_decode_cpu_run(const at::Tensor& coords, at::TensorList maps, at::IntArrayRef map_layer,
                                const c10::List<std::optional<at::Tensor>>& weights, at::TensorList biases,
                                at::IntArrayRef acts, c10::string_view precision, bool with_grad) {
  TORCH_CHECK(precision == "fp32" || precision == "bf16", "fused_decode: the CPU kernel computes in fp32 or bf16, got "
              "precision '", precision, "'");
  // Tangents stay fp32 (as in the reference: 16-bit layers lose too much of the derivative).
  const bool bf16 = precision == "bf16" && !with_grad;
  TORCH_CHECK(!bf16 || cpu_supports_bf16(), "fused_decode: precision 'bf16' on the CPU needs AVX512_BF16, which this "
              "CPU lacks");
  std::vector<at::Tensor> keep;
  std::vector<std::optional<at::Tensor>> w(weights.begin(), weights.end());
  const at::Tensor q = coords.contiguous();
  const FusedProgram p = make_program(q, maps.vec(), map_layer, w, biases.vec(), acts, keep);
  std::vector<at::Tensor> packed(p.num_layers);  // weights in the GEMM's panel layout (cheap: once per call)
  std::vector<bool> bf16_layer(p.num_layers, false);
  for (int l = 1; l < p.num_layers; ++l) {
    const FusedLayer& L = p.layers[l];
    // The answer's own layer (width 1) stays fp32, as in the reference under autocast.
    bf16_layer[l] = bf16 && l < p.num_layers - 1;
    if (bf16_layer[l]) {
      packed[l] = at::empty({packed_size_bf16(L.out, L.in)}, at::kShort);
      pack_weight_bf16(L.weight, L.out, L.in, reinterpret_cast<uint16_t*>(packed[l].data_ptr<int16_t>()));
    } else {
      packed[l] = at::empty({packed_size(L.out, L.in)}, at::kFloat);
      pack_weight(L.weight, L.out, L.in, packed[l].data_ptr<float>());
    }
  }
  at::Tensor out = with_grad ? at::empty({q.size(0), q.size(1), 3}, q.options()) : at::empty({q.size(0), q.size(1)}, q.options());
  fused_decode_cpu(p, packed, bf16_layer, q.data_ptr<float>(), out.data_ptr<float>(), q.size(0), q.size(1), with_grad);
  return out;
}

at::Tensor fused_decode_cpu_impl(const at::Tensor& coords, at::TensorList maps, at::IntArrayRef map_layer,
                                 const c10::List<std::optional<at::Tensor>>& weights, at::TensorList biases,
                                 at::IntArrayRef acts, c10::string_view precision) {
  return fused_decode_cpu_run(coords, maps, map_layer, weights, biases, acts, precision, false);
}

at::Tensor fused_decode_with_grad_cpu_impl(const at::Tensor& coords, at::TensorList maps, at::IntArrayRef map_layer,
                                           const c10::List<std::optional<at::Tensor>>& weights, at::TensorList biases,
                                           at::IntArrayRef acts, c10::string_view precision) {
  return fused_decode_cpu_run(coords, maps, map_layer, weights, biases, acts, precision, true);
}

std::tuple<at::Tensor, at::Tensor> inverse_cdf_sample_cpu_impl(const at::Tensor& weights, int64_t height, int64_t width,
                                                               int64_t n, int64_t seed, bool jitter,
                                                               const std::optional<at::Tensor>& order) {
  const int64_t* layout = check_inverse_cdf_args(weights, order, height, width, n, seed);
  const at::Tensor w = weights.contiguous();
  const int64_t B = w.size(0);
  at::Tensor coords = at::empty({B, n, 2}, w.options().dtype(at::kFloat));
  at::Tensor cells = at::empty({B, n}, w.options());
  inverse_cdf_sample_cpu(w.data_ptr<int64_t>(), layout, B, height, width, n, static_cast<uint32_t>(seed), jitter,
                         coords.data_ptr<float>(), cells.data_ptr<int64_t>());
  return {coords, cells};
}

at::Tensor bilinear_gather_cpu_impl(const at::Tensor& feat, const at::Tensor& coords) {
  check_gather_args(feat, coords);
  const auto B = feat.size(0), C = feat.size(1), H = feat.size(2), W = feat.size(3), N = coords.size(1);
  const at::Tensor f = feat.permute({0, 2, 3, 1}).contiguous();
  const at::Tensor q = coords.contiguous();
  at::Tensor out = at::empty({B, N, C}, feat.options());
  bilinear_gather_cpu(f.data_ptr<float>(), q.data_ptr<float>(), out.data_ptr<float>(), B, H, W, C, N);
  return out;
}

// Python (infinidepth/gs/render.py) projects and bins; these checks guard direct callers.
std::tuple<at::Tensor, at::Tensor, at::Tensor> gs_composite_cpu_impl(
    const at::Tensor& mean2d, const at::Tensor& conic, const at::Tensor& opacity, const at::Tensor& color,
    const at::Tensor& depth, const at::Tensor& tile_first, const at::Tensor& tile_count, const at::Tensor& order,
    int64_t height, int64_t width, int64_t tile, const at::Tensor& background) {
  const auto dt = mean2d.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, "gs_composite: float32 or float64 expected, got ", dt);
  const int64_t N = mean2d.size(0);
  TORCH_CHECK(mean2d.dim() == 2 && mean2d.size(1) == 2, "gs_composite: mean2d must be [N, 2], got ", mean2d.sizes());
  TORCH_CHECK(conic.dim() == 3 && conic.size(0) == N && conic.size(1) == 2 && conic.size(2) == 2,
              "gs_composite: conic must be [N, 2, 2], got ", conic.sizes());
  TORCH_CHECK(opacity.dim() == 1 && opacity.size(0) == N && depth.dim() == 1 && depth.size(0) == N,
              "gs_composite: opacity and depth must be [N]");
  TORCH_CHECK(color.dim() == 2 && color.size(0) == N && color.size(1) == 3, "gs_composite: color must be [N, 3]");
  TORCH_CHECK(background.dim() == 1 && background.size(0) == 3, "gs_composite: background must be [3]");
  for (const at::Tensor* x : {&conic, &opacity, &color, &depth, &background})
    TORCH_CHECK(x->scalar_type() == dt, "gs_composite: every float input must have mean2d's dtype");
  TORCH_CHECK(height > 0 && width > 0 && tile > 0, "gs_composite: height, width and tile must be positive");
  const int64_t tiles = ((height + tile - 1) / tile) * ((width + tile - 1) / tile);
  TORCH_CHECK(tile_first.dim() == 1 && tile_count.dim() == 1 && tile_first.size(0) == tiles && tile_count.size(0) == tiles,
              "gs_composite: tile_first and tile_count must hold one entry per tile (", tiles, ")");
  for (const at::Tensor* x : {&tile_first, &tile_count, &order})
    TORCH_CHECK(x->scalar_type() == at::kLong, "gs_composite: tile lists must be int64");
  const at::Tensor first = tile_first.contiguous(), count = tile_count.contiguous(), ord = order.contiguous();
  // Every list must lie inside `order` and name existing Gaussians: a bad list would read out of bounds.
  TORCH_CHECK((count.ge(0).logical_and(first.ge(0)).logical_and(first.add(count).le(ord.numel()))).all().item<bool>(),
              "gs_composite: a tile's list runs outside the order array");
  TORCH_CHECK(ord.numel() == 0 || (ord.min().item<int64_t>() >= 0 && ord.max().item<int64_t>() < N),
              "gs_composite: order names a Gaussian that does not exist");
  const at::Tensor m = mean2d.contiguous(), q = conic.contiguous(), o = opacity.contiguous(), c = color.contiguous(),
                   z = depth.contiguous(), bg = background.contiguous();
  at::Tensor rgb = at::empty({height, width, 3}, m.options());
  at::Tensor out_depth = at::empty({height, width}, m.options());
  at::Tensor alpha = at::empty({height, width}, m.options());
  if (dt == at::kFloat) {
    gs_composite_cpu<float>(m.data_ptr<float>(), q.data_ptr<float>(), o.data_ptr<float>(), c.data_ptr<float>(),
                            z.data_ptr<float>(), N, first.data_ptr<int64_t>(), count.data_ptr<int64_t>(),
                            ord.data_ptr<int64_t>(), height, width, tile, bg.data_ptr<float>(), rgb.data_ptr<float>(),
                            out_depth.data_ptr<float>(), alpha.data_ptr<float>());
  } else {
    gs_composite_cpu<double>(m.data_ptr<double>(), q.data_ptr<double>(), o.data_ptr<double>(), c.data_ptr<double>(),
                             z.data_ptr<double>(), N, first.data_ptr<int64_t>(), count.data_ptr<int64_t>(),
                             ord.data_ptr<int64_t>(), height, width, tile, bg.data_ptr<double>(),
                             rgb.data_ptr<double>(), out_depth.data_ptr<double>(), alpha.data_ptr<double>());
  }
  return {rgb, out_depth, alpha};
}

bool cpu_supports_bf16_op() { return cpu_supports_bf16(); }

std::vector<int64_t> fused_decode_limits_op() { return {kMaxLayers, kMaxMaps}; }

}  // namespace

TORCH_LIBRARY(infinidepth, m) {
  // Whether the CPU kernel can run precision "bf16" (AVX512_BF16).
  m.def("cpu_supports_bf16() -> bool", &cpu_supports_bf16_op);
  // The largest folded program fused_decode runs, on the CPU and CUDA alike: (layers, maps).
  m.def("fused_decode_limits() -> int[]", &fused_decode_limits_op);
  m.def("bilinear_gather(Tensor feat, Tensor coords) -> Tensor");
  m.def("fused_decode(Tensor coords, Tensor[] maps, int[] map_layer, Tensor?[] weights, Tensor[] biases, int[] acts, str precision=\"fp32\") -> Tensor");
  // Stratified inverse-CDF samples of integer cell weights: (coords [B, n, 2] float32, cells [B, n] int64);
  // with order, the weights are laid out in it (cell order[p]'s weight at position p).
  m.def("inverse_cdf_sample(Tensor weights, int height, int width, int n, int seed, bool jitter, Tensor? order=None) -> (Tensor, Tensor)");
  // The same program carrying the forward-mode tangents: [B, N, 3] = (value, d/dy, d/dx) per query.
  m.def("fused_decode_with_grad(Tensor coords, Tensor[] maps, int[] map_layer, Tensor?[] weights, Tensor[] biases, int[] acts, str precision=\"fp32\") -> Tensor");
  // Exact k-nearest-neighbour mean distances (csrc/outliers_cpu.cpp): a k-d tree of float64 points [N, 3] with
  // `leaf` points or fewer per leaf, (coords [3, N] in tree order, order [N]: input index of each, boxes [M, 6]),
  // and the mean distance of tree points begin..end-1 to their k nearest (themselves included).
  m.def("knn_tree(Tensor points, int leaf) -> (Tensor, Tensor, Tensor)");
  m.def("knn_mean_distance(Tensor coords, Tensor boxes, int leaf, int k, int begin, int end) -> Tensor");
  // Front-to-back compositing of projected, tile-binned Gaussians: (rgb [H, W, 3], depth [H, W], alpha [H, W]).
  m.def("gs_composite(Tensor mean2d, Tensor conic, Tensor opacity, Tensor color, Tensor depth, Tensor tile_first, Tensor tile_count, Tensor order, int height, int width, int tile, Tensor background) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(infinidepth, CPU, m) {
  m.impl("bilinear_gather", &bilinear_gather_cpu_impl);
  m.impl("fused_decode", &fused_decode_cpu_impl);
  m.impl("fused_decode_with_grad", &fused_decode_with_grad_cpu_impl);
  m.impl("inverse_cdf_sample", &inverse_cdf_sample_cpu_impl);
  m.impl("gs_composite", &gs_composite_cpu_impl);
  m.impl("knn_tree", &knn_tree_cpu);
  m.impl("knn_mean_distance", &knn_mean_distance_cpu);
}

}  // namespace infinidepth
