"""Whole models under torch.export and torch.compile: the graph holds the fused decoder op, the
result equals eager mode, and the input checks survive tracing (they raise when the exported or
compiled program runs on bad input, instead of being traced away or breaking the trace)."""

import pytest
import torch
from torch.export import Dim, ShapesCollection

from infinidepth.models import from_preset
from infinidepth.ops import available_backends

from test_models import sparse_for

SIZE = (25, 35)  # output grid: odd, and not the input's


class Predict(torch.nn.Module):
    def __init__(self, model, backend):
        super().__init__()
        self.model, self.backend = model, backend

    def forward(self, image, sparse_depth=None):
        return self.model.predict(image, output_size=SIZE, sparse_depth=sparse_depth, backend=self.backend, tile=300)


class Decode(torch.nn.Module):
    def __init__(self, model, backend):
        super().__init__()
        self.model, self.backend = model, backend

    def forward(self, image, coords):
        return self.model.decode(self.model.encode(image), coords, backend=self.backend)


class Encode(torch.nn.Module):
    """The encoder alone: its program returns the Features that a Decoder program takes."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image, sparse_depth=None):
        return self.model.encode(image, sparse_depth=sparse_depth)


class Decoder(torch.nn.Module):
    """The decoder alone, on features encoded once (by the model or by an Encode program)."""

    def __init__(self, model, backend):
        super().__init__()
        self.model, self.backend = model, backend

    def forward(self, feats, coords):
        return self.model.decode(feats, coords, backend=self.backend)


def export_decoder(model, backend, feats):
    """A decoder program for features like ``feats``, taking any number of queries."""
    coords = torch.rand(1, 100, 2) * 2 - 1
    dims = ShapesCollection()  # the one dynamic dimension, whatever the structure of the features
    dims[coords] = {1: Dim("n", min=1)}
    return export(Decoder(model, backend), (feats, coords), dynamic_shapes=dims)


def export(module, args, **kw):
    """Inference programs are exported without autograd, as the README says: then the graph holds
    no grad-mode switches, which torch does not restore when a check raises mid-program."""
    with torch.no_grad():
        return torch.export.export(module, args, **kw)


@pytest.fixture(autouse=True)
def grad_mode_is_left_as_found():
    before = torch.is_grad_enabled()
    yield
    after = torch.is_grad_enabled()
    torch.set_grad_enabled(before)
    assert after == before, "the test changed torch's global grad mode"


def holds_fused_op(ep) -> bool:
    return any(str(n.target) == "infinidepth.fused_decode.default" for g in ep.graph_module.modules()
               if isinstance(g, torch.fx.GraphModule) for n in g.graph.nodes if n.op == "call_function")


def assert_equals_eager(got, want):
    """fp32: the traced graph runs the same kernels as eager mode, up to the order of a few sums."""
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def models():
    return {name: from_preset(name).eval() for name in ("tiny", "official-tiny", "sensor-tiny")}


@pytest.mark.parametrize("backend", ["cpp", "torch"])
@pytest.mark.parametrize("name", ["tiny", "official-tiny"])
def test_exported_predict_equals_eager_and_holds_the_fused_op(models, name, backend):
    model = models[name]
    image = torch.rand(1, 3, 32, 48)
    ep = export(Predict(model, backend), (image,))
    assert holds_fused_op(ep) == (backend == "cpp")
    other = torch.rand(1, 3, 32, 48)  # a new input, not the one traced
    assert_equals_eager(ep.module()(other), model.predict(other, output_size=SIZE, backend=backend))


def test_saved_program_loads_and_runs_the_same(models, tmp_path):
    model = models["official-tiny"]
    image = torch.rand(1, 3, 32, 32)
    saved = export(Predict(model, "cpp"), (image,))
    torch.export.save(saved, tmp_path / "depth.pt2")
    ep = torch.export.load(tmp_path / "depth.pt2")  # resolves infinidepth.fused_decode: imported above
    assert holds_fused_op(ep)
    other = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ep.module()(other), saved.module()(other))
        with pytest.raises(RuntimeError, match="must be in"):
            ep.module()(image * 255)


@pytest.mark.skipif(not torch.cuda.is_available() or "cuda" not in available_backends("cuda"),
                    reason="no GPU with the cuda backend built")
def test_exported_predict_on_a_gpu_holds_the_cuda_kernel():
    model = from_preset("official-tiny").eval().cuda()
    image = torch.rand(1, 3, 32, 48, device="cuda")
    ep = export(Predict(model, "cuda"), (image,))
    assert holds_fused_op(ep)
    other = torch.rand(1, 3, 32, 48, device="cuda")
    with torch.no_grad():
        assert_equals_eager(ep.module()(other), model.predict(other, output_size=SIZE, backend="cuda"))
        with pytest.raises(RuntimeError, match="NaN"):
            ep.module()(other * float("nan"))
        torch.cuda.synchronize()  # the check raised on the host: no device-side assert poisoned the GPU
        assert_equals_eager(ep.module()(image), model.predict(image, output_size=SIZE, backend="cuda"))


def test_exported_sensor_model_takes_a_prompt_with_any_number_of_samples(models):
    model = models["sensor-tiny"]
    image = torch.rand(1, 3, 32, 32)
    ep = export(Predict(model, "cpp"), (image, sparse_for(image, density=0.05)))
    for density, seed in ((0.02, 1), (0.3, 2)):  # other counts of valid samples than traced
        sparse = sparse_for(image, density=density, seed=seed)
        assert_equals_eager(ep.module()(image, sparse), model.predict(image, SIZE, sparse_depth=sparse))
    with pytest.raises(RuntimeError, match="negative depth"):
        ep.module()(image, -sparse)
    with pytest.raises(RuntimeError, match="no valid"):
        ep.module()(image, torch.zeros_like(sparse))


@pytest.mark.parametrize(
    "make,match",
    [(lambda x: x.index_put((torch.tensor([0]),) * 4, torch.tensor(float("nan"))), "NaN"),
     (lambda x: x * 255, r"must be in \[0, 1\]")],
    ids=["nan", "0-255"],
)
def test_exported_predict_still_refuses_bad_images(models, make, match):
    model = models["official-tiny"]
    image = torch.rand(1, 3, 32, 32)
    ep = export(Predict(model, "cpp"), (image,))
    with pytest.raises(ValueError, match=match):  # eager
        model.predict(make(image))
    with pytest.raises(RuntimeError, match=match):  # exported
        ep.module()(make(image))


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_exported_decode_takes_any_number_of_queries_and_refuses_far_ones(models, backend):
    model = models["tiny"]
    image = torch.rand(1, 3, 32, 32)
    shapes = {"image": None, "coords": {1: Dim("n", min=1)}}
    ep = export(Decode(model, backend), (image, torch.rand(1, 100, 2) * 2 - 1), dynamic_shapes=shapes)
    feats = model.encode(image)
    for n in (1, 7, 3000):
        coords = torch.rand(1, n, 2) * 2 - 1
        assert_equals_eager(ep.module()(image, coords), model.decode(feats, coords, backend=backend))
    far = torch.tensor([[[0.0, 0.0], [0.5, 40.0]]])  # pixel coordinates passed by mistake
    with pytest.raises(RuntimeError, match="more than 2"):
        ep.module()(image, far)
    with pytest.raises(RuntimeError, match="NaN"):
        ep.module()(image, torch.full((1, 3, 2), float("nan")))


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])  # inductor: torch.compile's default, what users get
def test_compiled_decode_equals_eager_and_refuses_far_coords(models, compiler):
    model = models["official-tiny"]
    feats = model.encode(torch.rand(1, 3, 32, 32))
    torch._dynamo.reset()
    decode = torch.compile(lambda c: model.decode(feats, c, backend="cpp"), fullgraph=True, backend=compiler)
    coords = torch.rand(1, 500, 2) * 2 - 1
    assert_equals_eager(decode(coords), model.decode(feats, coords, backend="cpp"))
    with pytest.raises(RuntimeError, match="more than 2"):
        decode(coords * 3)


@pytest.fixture(scope="module")
def encoders(models):
    """The encoder programs of the tiny models (traced on 32x48 images), exported once for the tests."""
    return {name: export(Encode(models[name]), (torch.rand(1, 3, 32, 48),)) for name in ("tiny", "official-tiny")}


@pytest.mark.parametrize("backend", ["cpp", "torch"])
@pytest.mark.parametrize("name", ["tiny", "official-tiny"])
def test_encoder_and_decoder_export_apart_and_decode_any_number_of_queries(models, encoders, name, backend):
    model, enc = models[name], encoders[name]
    image = torch.rand(1, 3, 32, 48)  # a new input, not the one traced
    want = model.encode(image)
    dec = export_decoder(model, backend, model.encode(torch.rand(1, 3, 32, 48)))
    assert holds_fused_op(dec) == (backend == "cpp")
    assert not holds_fused_op(enc)  # the decoder is not in the encoder's program
    got, decode = enc.module()(image), dec.module()
    assert type(got) is type(want) and got.image_size == want.image_size == (32, 48)
    assert len(got.maps) == len(want.maps) and got.disparity_scale is None
    for g, w in zip(got.maps, want.maps):
        assert_equals_eager(g, w)
    assert (got.tokens is None) == (want.tokens is None)  # (the released models' ViT tokens, for GS heads)
    if want.tokens is not None:
        assert_equals_eager(got.tokens, want.tokens)
    for n in (1, 7, 3000):
        coords = torch.rand(1, n, 2) * 2 - 1
        expected = model.decode(want, coords, backend=backend)  # with cpp, keeps want's fold in its cache
        assert_equals_eager(decode(got, coords), expected)
        assert_equals_eager(decode(want, coords), expected)  # eager features too, fold cache filled (cpp)
    with pytest.raises(RuntimeError, match="more than 2"):
        decode(got, torch.tensor([[[0.0, 0.0], [0.5, 40.0]]]))  # pixel coordinates passed by mistake


def test_sensor_decoder_program_takes_the_prompt_scale_with_the_features(models):
    model = models["sensor-tiny"]
    image = torch.rand(1, 3, 32, 32)
    dec = export_decoder(model, "cpp", model.encode(image, sparse_depth=sparse_for(image, density=0.05)))
    assert holds_fused_op(dec)
    coords, decode = torch.rand(1, 500, 2) * 2 - 1, dec.module()
    for density, seed in ((0.02, 1), (0.3, 2)):  # other prompts than traced: other disparity scales
        feats = model.encode(image, sparse_depth=sparse_for(image, density=density, seed=seed))
        assert_equals_eager(decode(feats, coords), model.decode(feats, coords))


def test_saved_encoder_and_decoder_programs_load_and_run_the_same(models, encoders, tmp_path):
    model, enc = models["tiny"], encoders["tiny"]
    dec = export_decoder(model, "cpp", model.encode(torch.rand(1, 3, 32, 48)))
    torch.export.save(enc, tmp_path / "encode.pt2")
    torch.export.save(dec, tmp_path / "decode.pt2")
    enc2, dec2 = torch.export.load(tmp_path / "encode.pt2"), torch.export.load(tmp_path / "decode.pt2")
    assert holds_fused_op(dec2)
    image, coords = torch.rand(1, 3, 32, 48), torch.rand(1, 40, 2) * 2 - 1
    with torch.no_grad():
        feats = enc2.module()(image)
        assert torch.equal(dec2.module()(feats, coords), dec.module()(enc.module()(image), coords))
        with pytest.raises(RuntimeError, match="NaN"):
            dec2.module()(feats, torch.full((1, 3, 2), float("nan")))


def test_decode_compiled_with_dynamic_shapes_takes_the_features_as_an_argument(models):
    model = models["official-tiny"]
    torch._dynamo.reset()
    decode = torch.compile(model.decode, fullgraph=True, backend="aot_eager", dynamic=True)
    for n in (3, 500):
        feats, coords = model.encode(torch.rand(1, 3, 32, 32)), torch.rand(1, n, 2) * 2 - 1
        assert_equals_eager(decode(feats, coords, backend="cpp"), model.decode(feats, coords, backend="cpp"))
    with pytest.raises(RuntimeError, match=r"more than 2 \(pixel coordinates"):  # the message as eager mode's
        decode(feats, coords * 3, backend="cpp")
