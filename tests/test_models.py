"""Models: the public API contract, input checks, and behaviour the released code defines."""

import copy

import pytest
import torch

import infinidepth
from infinidepth.models import Features, from_preset
from infinidepth.ops import grid_coords

from conftest import rel_err


@pytest.fixture(scope="module")
def models():
    return {name: from_preset(name) for name in ("tiny", "official-tiny", "sensor-tiny")}


def sparse_for(image, density=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, _, H, W = image.shape
    depth = 1 + 9 * torch.rand(B, 1, H, W, generator=g)
    return torch.where(torch.rand(B, 1, H, W, generator=g) < density, depth, torch.zeros_like(depth))


def encode(model, image):
    return model.encode(image, sparse_depth=sparse_for(image) if "Sensor" in model.arch else None)


@pytest.mark.parametrize("name", ["tiny", "official-tiny", "sensor-tiny"])
def test_api_shapes_and_predict_matches_decode(models, name):
    model = models[name]
    image = torch.rand(2, 3, 32, 48)
    feats = encode(model, image)
    coords = torch.rand(2, 40, 2) * 2 - 1
    out = model.decode(feats, coords, backend="torch")
    assert out.shape == (2, 40) and torch.isfinite(out).all()
    # predict at an arbitrary size == decoding the dense grid of that size, then to_depth
    sparse = sparse_for(image) if "Sensor" in model.arch else None
    depth = model.predict(image, output_size=(37, 53), sparse_depth=sparse, backend="torch", tile=300)
    assert depth.shape == (2, 1, 37, 53)
    want = model.to_depth(model.decode(feats, grid_coords(37, 53, batch=2), backend="torch")).reshape(2, 1, 37, 53)
    torch.testing.assert_close(depth, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["tiny", "official-tiny", "sensor-tiny"])
def test_default_backend_is_visible_and_agrees_with_torch(models, name):
    model = models[name]
    assert model.backend == "auto"
    assert model.resolved_backend() in ("cpp", "torch")
    feats = encode(model, torch.rand(1, 3, 32, 32))
    coords = torch.rand(1, 64, 2) * 2.4 - 1.2
    # "auto" is exactly the backend it names (accuracy of each backend: the test below)
    assert torch.equal(model.decode(feats, coords), model.decode(feats, coords, backend=model.resolved_backend()))


@pytest.mark.parametrize(
    "image,match",
    [
        (torch.rand(1, 3, 30, 32), "multiples of 16"),
        (torch.rand(1, 1, 32, 32), r"\[B, 3, H, W\]"),
        (torch.rand(3, 32, 32), r"\[B, 3, H, W\]"),
        (torch.rand(0, 3, 32, 32), "batch is empty"),
        (torch.full((1, 3, 32, 32), float("nan")), "NaN"),
        (torch.rand(1, 3, 32, 32) * 255, r"\[0, 1\]"),
        (torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8), "float"),
    ],
)
def test_bad_images_get_clear_errors(models, image, match):
    with pytest.raises((ValueError, TypeError), match=match):
        models["tiny"].encode(image)


def test_decode_rejects_bad_coordinates(models):
    feats = models["tiny"].encode(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="NaN"):
        models["tiny"].decode(feats, torch.tensor([[[float("nan"), 0.0]]]))
    with pytest.raises(ValueError, match="batch"):
        models["tiny"].decode(feats, torch.zeros(2, 3, 2))


def test_official_clamps_coordinates_like_the_release(models):
    """Released decoder clamps to [-1 + 1e-6, 1 - 1e-6]: the edge and far beyond it give the same value."""
    model = models["official-tiny"]
    feats = model.encode(torch.rand(1, 3, 32, 32))
    edge = torch.tensor([[[1.0, -1.0], [0.3, 1.0], [-1.0, 0.0]]])
    beyond = torch.tensor([[[2.0, -1.7], [0.3, 1.5], [-1.3, 0.0]]])
    torch.testing.assert_close(model.decode(feats, beyond, backend="torch"), model.decode(feats, edge, backend="torch"))


@pytest.mark.parametrize("name", ["tiny", "official-tiny"])
def test_decode_refuses_coordinates_far_outside_the_image(models, name):
    """Pixel coordinates passed by mistake get a clear error, not a map of the border's value."""
    model = models[name]
    image = torch.rand(1, 3, 32, 32)
    feats = model.encode(image)
    with pytest.raises(ValueError, match="chunk must be a positive"):
        model.decode(feats, torch.zeros(1, 3, 2), chunk=-1)
    pixels = torch.tensor([[[0.5, 0.5], [20.5, 3.5]]])
    for call in (lambda c: model.decode(feats, c), lambda c: model.decode_depth(feats, c), lambda c: model(image, c)):
        with pytest.raises(ValueError, match="magnitude 20.5, more than 2 .pixel coordinates"):
            call(pixels)
        with pytest.raises(ValueError, match="NaN or infinite"):
            call(torch.tensor([[[0.0, float("inf")]]]))
        call(torch.tensor([[[-2.0, 2.0]]]))                                     # the limit itself is a query


def test_sensor_output_scales_with_the_metric_prompt(models):
    """Median warp/unwarp: scaling the sparse depth by k scales the predicted disparity by 1/k."""
    model = models["sensor-tiny"]
    image = torch.rand(1, 3, 32, 32)
    sparse = sparse_for(image, density=0.2)
    coords = torch.rand(1, 50, 2) * 2 - 1
    base = model.decode(model.encode(image, sparse_depth=sparse), coords, backend="torch")
    scaled = model.decode(model.encode(image, sparse_depth=3.0 * sparse), coords, backend="torch")
    torch.testing.assert_close(scaled, base / 3.0, rtol=1e-5, atol=1e-7)
    # also where the median depth is beyond 100 m (median disparity below 1e-2: a far outdoor scene)
    far = model.decode(model.encode(image, sparse_depth=60.0 * sparse), coords, backend="torch")
    torch.testing.assert_close(far, base / 60.0, rtol=1e-5, atol=1e-9)
    # and the prompt matters: other depth values give another output
    other = model.decode(model.encode(image, sparse_depth=sparse.pow(2)), coords, backend="torch")
    assert not torch.allclose(other * other.abs().mean() / base.abs().mean(), base, rtol=1e-3)


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda s: None, "needs sparse_depth"),
        (lambda s: s[:, :, :16], "shape"),
        (lambda s: torch.where(s > 0, torch.full_like(s, float("nan")), s), "NaN"),
        (lambda s: -s, "negative"),
        (lambda s: torch.zeros_like(s), "no valid"),
        # judged as float32, what the model computes in: out of its range, not silently missing
        (lambda s: (s > 0).double() * 1e300, "infinite depth"),
        (lambda s: torch.where(s > 0, 1e-40, 0.0), "below 1e-30"),
        # one sample at 1e-20 m among metres passed every check and made the whole depth map NaN
        (lambda s: torch.where(s == s.max(), 1e-20, s), "too wide a range.*smallest positive depth is 1e-20"),
        (lambda s: (s * 1000).to(torch.uint16), "divide by 1000"),
        (lambda s: s > 0, "must be a float tensor"),
    ],
)
def test_sensor_bad_sparse_depth(models, mutate, match):
    image = torch.rand(1, 3, 32, 32)
    with pytest.raises((ValueError, TypeError), match=match):
        models["sensor-tiny"].encode(image, sparse_depth=mutate(sparse_for(image)))


def test_sensor_refuses_more_prompt_samples_than_it_attends_to(models, monkeypatch):
    """A dense depth map as the prompt is one attention token per pixel (786k for the released
    input): refused with the count and what to do, not hours of attention or an out-of-memory crash."""
    from infinidepth.models import official

    image = torch.rand(2, 3, 32, 32)
    sparse = torch.zeros(2, 1, 32, 32)
    sparse.view(2, -1)[0, :40] = 2.0
    sparse.view(2, -1)[1, :41] = 3.0
    monkeypatch.setattr(official, "MAX_PROMPT_SAMPLES", 40)
    with pytest.raises(ValueError, match="image 1 has 41 valid samples; the prompt takes at most 40.*random subset"):
        models["sensor-tiny"].encode(image, sparse_depth=sparse)
    models["sensor-tiny"].encode(image[:1], sparse_depth=sparse[:1])  # the limit itself is taken


def test_sensor_model_refuses_features_of_a_model_without_prompts(models):
    """Features from another model's encode carry no prompt scale: a sentence, not an AttributeError."""
    feats = models["official-tiny"].encode(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="no depth-prompt scale"):
        models["sensor-tiny"].decode(feats, torch.zeros(1, 4, 2), backend="torch")


def test_weights_other_than_float32_and_too_small_images_are_named(models):
    image = torch.rand(1, 3, 32, 32)
    for convert in (lambda m: m.double(), lambda m: m.half()):
        with pytest.raises(TypeError, match="model.precision"):
            convert(copy.deepcopy(models["tiny"])).encode(image)
    for name in ("official-tiny", "sensor-tiny"):
        with pytest.raises(ValueError, match="two 16-pixel cells"):
            models[name].encode(torch.rand(1, 3, 16, 16))
    assert models["official-tiny"].encode(torch.rand(1, 3, 16, 32)).maps[0].shape[0] == 1


def test_models_without_prompts_refuse_sparse_depth(models):
    image = torch.rand(1, 3, 32, 32)
    for name in ("tiny", "official-tiny"):
        with pytest.raises(ValueError, match="sparse"):
            models[name].encode(image, sparse_depth=sparse_for(image))


def test_vit_intermediate_layers_follow_the_block_stack():
    vit = from_preset("official-tiny").pretrained
    x = torch.randn(1, 3, 32, 48)
    layers = vit.intermediate_layers(x, [0, 3])
    assert [t.shape for t in layers] == [(1, 6, 64), (1, 6, 64)]
    # by hand: tokens through all blocks, normalised, prefix dropped
    tokens = torch.cat([vit.cls_token, vit.storage_tokens, vit.patch_embed(x)], dim=1)
    rope = vit.rope_embed(2, 3)
    for blk in vit.blocks:
        tokens = blk(tokens, rope)
    torch.testing.assert_close(layers[1], vit.norm(tokens)[:, 5:])


def test_rope_rotates_pairs_by_position_dependent_angles():
    vit = from_preset("official-tiny").pretrained
    sin, cos = vit.rope_embed(2, 3)
    assert sin.shape == (6, 32)
    torch.testing.assert_close(sin**2 + cos**2, torch.ones_like(sin))
    # first patch (row 0, col 0) sits at normalised (-0.5, -2/3); the lowest frequency has period 1
    assert torch.allclose(sin[0, 0], torch.sin(torch.tensor(2 * torch.pi * -0.5)), atol=1e-6)
    assert torch.allclose(sin[0, 8], torch.sin(torch.tensor(2 * torch.pi * -2 / 3)), atol=1e-6)


def test_paper_model_is_differentiable_end_to_end():
    model = from_preset("tiny").train()
    image = torch.rand(1, 3, 32, 32)
    maps = model.pyramid(image)
    assert [m.shape[-2:] for m in maps] == [(8, 8), (4, 4), (2, 2)]
    from infinidepth.ops import implicit_decode

    out = implicit_decode(maps, torch.rand(1, 20, 2) * 2 - 1, model.decoder.weights(), backend="torch")
    out.sum().backward()
    assert model.encoder.blocks[0].attn.qkv.weight.grad is not None
    assert model.decoder.stages[0].gate.grad is not None


def test_load_model_preset_and_unknown_name():
    assert isinstance(infinidepth.load_model("tiny"), infinidepth.ImplicitDepthModel)
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        infinidepth.load_model("/nonexistent/model.ckpt")


@pytest.mark.parametrize("name", ["tiny", "official-tiny", "sensor-tiny"])
def test_every_backend_decodes_like_the_reference(models, name):
    from infinidepth.ops import available_backends

    model = copy.deepcopy(models[name])
    # Random weights give nearly constant outputs; widen the decoder's last layer so that a
    # tolerance relative to the output's std means something.
    last = model.decoder.mlp[-1] if hasattr(model, "decoder") else model.depth_implicit_head.out_layer.layers[-2]
    with torch.no_grad():
        last.weight.mul_(30.0)
    image = torch.rand(2, 3, 32, 48)
    feats = encode(model, image)
    coords = torch.rand(2, 333, 2) * 2.6 - 1.3
    coords[:, :4] = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [1.0, -1.0], [0.0, 1.0]])
    # oracle: the reference in float64 on the same fp32 features (the fp32 reference's own rounding
    # is as large as the tolerance when random weights give outputs of little spread)
    model64 = copy.deepcopy(model).double()
    scale = None if feats.disparity_scale is None else feats.disparity_scale.double()
    feats64 = Features([m.double() for m in feats.maps], feats.image_size, scale)
    want = model64.decode(feats64, coords.double(), backend="torch")
    for backend in available_backends("cpu"):
        got = model.decode(feats, coords, backend=backend)
        assert rel_err(got, want) < 1e-5, backend
    assert ("folded", "cpp") in feats.extras  # folded once per image, kept with the features


def test_folded_decoder_follows_the_weights(models):
    """The fold kept with the features is of the weights it was made from: after an in-place change
    (an optimiser step, load_state_dict) or with another model's decoder, decode folds afresh."""
    model = copy.deepcopy(models["tiny"])
    other = infinidepth.models.from_preset("tiny", seed=1)
    feats = encode(model, torch.rand(1, 3, 32, 48))
    coords = torch.rand(1, 200, 2) * 2 - 1
    model.decode(feats, coords, backend="cpp")
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.add_(0.1 * torch.randn_like(p))
    assert rel_err(model.decode(feats, coords, backend="cpp"), model.decode(feats, coords, backend="torch")) < 1e-4
    assert rel_err(other.decode(feats, coords, backend="cpp"), other.decode(feats, coords, backend="torch")) < 1e-4  # stale: 0.7
    assert len(feats.extras) == 1  # one fold per backend, the stale one replaced


def test_prompt_model_names_bad_prompts_and_token_grids():
    """Called directly (the GS head, a custom pipeline), the prompt model used to fail deep inside:
    a reshape error for a token count that is not h*w, an IndexError for a batch mismatch; an
    inf sample turned every output token to NaN, a NaN one was silently dropped."""
    from infinidepth.models.prompt import PromptModel

    torch.manual_seed(0)
    m = PromptModel(32)
    tokens = torch.randn(2, 6, 32)
    prompt = torch.rand(2, 1, 20, 30)
    with torch.no_grad():
        assert torch.isfinite(m(tokens, prompt, 2, 3)).all()
        with pytest.raises(ValueError, match=r"tokens must have shape \[B, 8, D\] for a 2x4 patch grid"):
            m(tokens, prompt, 2, 4)
        for bad in (prompt[:1], prompt[:, 0], torch.rand(2, 2, 20, 30)):
            with pytest.raises(ValueError, match=r"prompt must have shape \[2, 1, H, W\]"):
                m(tokens, bad, 2, 3)
        for value in (float("nan"), float("inf")):
            bad = prompt.clone()
            bad[1, 0, 3, 4] = value
            with pytest.raises(ValueError, match="NaN or infinite"):
                m(tokens, bad, 2, 3)


def test_prompt_median_is_torch_quantile_and_takes_more_than_2_24_values():
    from infinidepth.models.official import median_of

    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 3, 10, 1001):
        x = torch.rand(n, generator=g)
        torch.testing.assert_close(median_of(x), torch.quantile(x, 0.5), rtol=1e-6, atol=0)
    x = torch.cat([torch.ones(2**23 + 1), torch.zeros(2**23 + 1)])    # torch.quantile refuses this many
    assert median_of(x).item() == 0.5


def test_intermediate_layers_out_of_range_are_named(models):
    vit = models["tiny"].encoder
    n = len(vit.blocks)
    with pytest.raises(ValueError, match=rf"intermediate layers \[{n}\] out of range: this ViT has blocks 0..{n - 1}"):
        vit.intermediate_layers(torch.rand(1, 3, 32, 32), [0, n])
    assert len(vit.intermediate_layers(torch.rand(1, 3, 32, 32), [0, n - 1])) == 2


@pytest.mark.parametrize("name", ["tiny", "official-tiny", "sensor-tiny"])
def test_inference_mode_callers_get_the_same_answers(models, name):
    """Under torch.inference_mode (PyTorch's recommended inference context) predict used to fail on
    the default CPU backend ("Inference tensors do not track version counter": the fold cache reads
    the maps' versions), and derivatives, so sample_points, failed on every backend (no autograd)."""
    model = models[name]
    image = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    sparse = sparse_for(image) if "Sensor" in model.arch else None
    coords = torch.rand(1, 20, 2, generator=torch.Generator().manual_seed(1)) * 2 - 1
    K = torch.tensor([[40.0, 0, 24], [0, 40.0, 16], [0, 0, 1]])
    for backend in ("torch", "cpp"):
        want = model.predict(image, output_size=(19, 23), sparse_depth=sparse, backend=backend)
        want_d, want_g = model.decode_depth(model.encode(image, sparse_depth=sparse), coords, backend=backend, with_grad=True)
        # (max_depth None: these random models answer depth at the disparity floor, beyond the far cut)
        want_p = model.sample_points(image, 16, K, seed=0, sparse_depth=sparse, backend=backend, max_depth=None).points
        with torch.inference_mode():
            args = [t.clone() for t in (image, coords, K)] + [None if sparse is None else sparse.clone()]
            img, c, k, s = args                                     # inference tensors, as users make them there
            out = torch.empty(1, 1, 19, 23)
            assert model.predict(img, output_size=(19, 23), sparse_depth=s, backend=backend, out=out) is out
            d, g = model.decode_depth(model.encode(img, sparse_depth=s), c, backend=backend, with_grad=True)
            p = model.sample_points(img, 16, k, seed=0, sparse_depth=s, backend=backend, max_depth=None).points
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close((d, g, p), (want_d, want_g, want_p), rtol=1e-5, atol=1e-6)


def test_predict_defaults_to_the_input_size_and_decode_checks_its_arguments(models):
    """Without output_size the map has the image's (H, W), not (W, H); decode_depth decodes on the
    backend it is given (a bad name is refused, not ignored), and a chunk of 0 queries is refused."""
    model = models["tiny"]
    image = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    assert model.predict(image, backend="cpp").shape == (1, 1, 32, 48)
    feats = model.encode(image)
    coords = torch.zeros(1, 4, 2)
    with pytest.raises(ValueError, match="nope"):
        model.decode_depth(feats, coords, backend="nope")
    for chunk in (0, -1):
        with pytest.raises(ValueError, match="chunk must be a positive"):
            model.decode(feats, coords, chunk=chunk)


def central_difference(model, feats, coords, eps=1e-3):
    """d depth / d (y, x) ``[B, N, 2]`` by central differences of decode_depth (the reference)."""
    fd = []
    for k in range(2):
        step = torch.zeros(2)
        step[k] = eps
        fd.append((model.decode_depth(feats, coords + step, backend="torch")
                   - model.decode_depth(feats, coords - step, backend="torch")) / (2 * eps))
    return torch.stack(fd, -1)


def test_depth_derivative_is_the_chain_rule_through_to_depth():
    """decode_depth's with_grad is d depth / d (y, x), not the raw output's derivative: checked
    against central differences (the decoder is piecewise smooth: a few queries near a kink may differ)."""
    model = from_preset("tiny")                       # depth = exp(raw): the factor is the depth itself
    image = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    feats = model.encode(image)
    coords = torch.rand(1, 30, 2, generator=torch.Generator().manual_seed(2)) * 1.6 - 0.8
    depth, grad = model.decode_depth(feats, coords, backend="torch", with_grad=True)
    fd = central_difference(model, feats, coords)
    err = (grad - fd).norm(dim=-1) / fd.norm(dim=-1)
    assert err.median() < 1e-2, err   # the raw output's derivative is ~5% off here (depth ~0.95)


def test_sample_points_colours_and_normals_read_the_right_axes(monkeypatch):
    """Colours are the image's, bilinear at each point with the border pixels repeated outward (a
    ramp in x as red, one in y as green: exact); the normals are computed from d depth / d y in
    channel 0 and d / d x in channel 1, as surface_normals takes them."""
    import infinidepth.sampling as sampling

    model = from_preset("tiny")
    H, W = 32, 48
    ys, xs = torch.meshgrid(torch.arange(H) / (H - 1), torch.arange(W) / (W - 1), indexing="ij")
    image = torch.stack([xs, ys, torch.full_like(xs, 0.5)])[None]
    K = torch.tensor([[40.0, 0, 24], [0, 40.0, 16], [0, 0, 1]])
    seen = {}
    original = sampling.surface_normals

    def spy(depth, grad, intrinsics):
        seen["grad"] = grad
        return original(depth, grad, intrinsics)

    monkeypatch.setattr(sampling, "surface_normals", spy)
    sp = model.sample_points(image, 600, K, seed=0, backend="torch")
    y_pix = ((sp.coords[0, :, 0] + 1) / 2 * H - 0.5).clamp(0, H - 1)
    x_pix = ((sp.coords[0, :, 1] + 1) / 2 * W - 0.5).clamp(0, W - 1)
    at_border = (x_pix == 0) | (x_pix == W - 1) | (y_pix == 0) | (y_pix == H - 1)
    assert at_border.any()                            # within half a pixel of the edge: clamped
    want = torch.stack([x_pix / (W - 1), y_pix / (H - 1), torch.full_like(x_pix, 0.5)], -1)
    torch.testing.assert_close(sp.colors[0], want, rtol=0, atol=1e-5)
    # the derivative map given to surface_normals, at some pixel centres, against central differences
    pixels = torch.tensor([[3, 5], [10, 40], [20, 17], [28, 30], [15, 2], [7, 25]])
    coords = torch.stack([(pixels[:, 0] + 0.5) / H * 2 - 1, (pixels[:, 1] + 0.5) / W * 2 - 1], -1)[None]
    fd = central_difference(model, model.encode(image), coords)[0]
    grad = seen["grad"][0, :, pixels[:, 0], pixels[:, 1]].T
    err = (grad - fd).norm(dim=-1) / fd.norm(dim=-1)
    assert err.median() < 1e-2, err
