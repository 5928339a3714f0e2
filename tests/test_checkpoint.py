"""Checkpoints: the released layouts (key lists in tests/data), round trips, and clear mismatch errors."""

import argparse
import json
from pathlib import Path

import pytest
import torch
from conftest import RunsCode

import infinidepth
from infinidepth.checkpoint import (CheckpointError, RefusedPickle, infer_architecture, read_torch_weights,
                                    torch_load_weights_only)
from infinidepth.models import build_model, from_preset

DATA = Path(__file__).parent / "data"


def released_layout(name):
    """{key: shape} from the key listing of a released checkpoint."""
    out = {}
    for line in (DATA / f"official_keys_{name}.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, _ = line.split("\t")
        out[key] = tuple(int(v) for v in shape.strip("[]").split(",") if v.strip())
    return out


@pytest.mark.parametrize("name,arch", [("infinidepth", "InfiniDepth"), ("depthsensor", "InfiniDepth_DepthSensor")])
def test_large_models_have_the_released_keys_and_shapes(name, arch):
    want = released_layout(name)
    with torch.device("meta"):
        model = build_model(arch)
    have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(want) - set(have)) == [] and sorted(set(have) - set(want)) == []
    assert {k: v for k, v in have.items() if want[k] != v} == {}
    # and a file with exactly those keys is recognised as that architecture, ViT-L inside
    with torch.device("meta"):
        sd = {k: torch.empty(s) for k, s in want.items()}
    got_arch, cfg = infer_architecture(sd)
    assert got_arch == arch
    assert (cfg.vit.embed_dim, cfg.vit.depth, cfg.vit.num_heads, cfg.hidden) == (1024, 24, 16, (1024, 256, 32))


def outputs(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, 32, 32, generator=g)
    sparse = None
    if "Sensor" in model.arch:
        sparse = torch.where(torch.rand(1, 1, 32, 32, generator=g) < 0.1, 2 + torch.rand(1, 1, 32, 32, generator=g), torch.zeros(1, 1, 32, 32))
    return model.decode(model.encode(image, sparse_depth=sparse), torch.rand(1, 30, 2, generator=g) * 2 - 1, backend="torch")


@pytest.mark.parametrize("preset", ["tiny", "official-tiny", "sensor-tiny"])
def test_save_and_reload_without_loss(tmp_path, preset):
    model = from_preset(preset, seed=3)
    path = infinidepth.save_model(model, tmp_path / "m.safetensors")
    again = infinidepth.load_model(path)
    assert type(again) is type(model) and again.config == model.config
    assert not any(m.training for m in again.modules())   # ready to use: eval mode
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    assert torch.equal(outputs(model), outputs(again))
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left behind


@pytest.mark.parametrize("preset", ["official-tiny", "sensor-tiny", "tiny"])
@pytest.mark.parametrize("layout", ["lightning", "plain_pt", "plain_safetensors", "lightning_keys_safetensors", "ddp_pt",
                                    "ddp_compiled_pt"])
def test_foreign_files_load_by_their_keys(tmp_path, preset, layout):
    model = from_preset(preset, seed=5)
    sd = model.state_dict()
    if layout.startswith("ddp"):
        # saved from inside DistributedDataParallel (and torch.compile): its own state_dict() prefixes every key
        wrapped = torch.compile(model) if layout == "ddp_compiled_pt" else model
        path = tmp_path / "m.pt"
        torch.save(torch.nn.DataParallel(wrapped).state_dict(), path)
        assert all(k.startswith("module._orig_mod." if layout == "ddp_compiled_pt" else "module.")
                   for k in torch.load(path))
    elif layout == "lightning":
        path = tmp_path / "m.ckpt"
        torch.save({"state_dict": {f"pipeline.{k}": v for k, v in sd.items()}, "epoch": 1, "global_step": 10}, path)
    elif layout == "plain_pt":
        path = tmp_path / "m.pt"
        torch.save(sd, path)
    else:
        from safetensors.torch import save_file

        # the second: a released .ckpt's state_dict converted as it is, "pipeline." prefix and all
        prefix = "pipeline." if layout == "lightning_keys_safetensors" else ""
        path = tmp_path / "m.safetensors"
        save_file({prefix + k: v.contiguous() for k, v in sd.items()}, str(path))
    loaded = infinidepth.load_model(path)
    assert loaded.arch == model.arch
    assert torch.equal(outputs(model), outputs(loaded))
    # a released file records no input size: it runs at the released inference script's 768x1024
    assert loaded.input_size == ((768, 1024) if model.arch in ("InfiniDepth", "InfiniDepth_DepthSensor") else None)


def test_mismatched_checkpoint_lists_missing_unexpected_and_shapes(tmp_path):
    sd = from_preset("official-tiny").state_dict()
    sd.pop("depth_implicit_head.out_layer.layers.2.bias")
    sd["pretrained.extra_thing"] = torch.zeros(3)
    sd["basic_encoder.conv1.bias"] = torch.zeros(7)
    path = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {f"pipeline.{k}": v for k, v in sd.items()}}, path)
    with pytest.raises(CheckpointError) as err:
        infinidepth.load_model(path)
    msg = str(err.value)
    assert "1 missing keys: depth_implicit_head.out_layer.layers.2.bias" in msg
    assert "1 unexpected keys: pretrained.extra_thing" in msg
    assert "basic_encoder.conv1.bias: file (7,) vs model (16,)" in msg


def test_unreadable_and_unknown_files(tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        infinidepth.load_model(junk)
    other = tmp_path / "other.pt"
    torch.save({"backbone.weight": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout"):
        infinidepth.load_model(other)
    gs = tmp_path / "infinidepth_gs.ckpt"   # the released GS head: keys encoder.<GSPixelAlignPredictor key>
    torch.save({"state_dict": {"encoder.gaussian_head.0.bias": torch.zeros(37),
                               "encoder.rgb_encoder.0.bias": torch.zeros(32)}}, gs)
    with pytest.raises(CheckpointError, match="Gaussian-splatting head.*PixelAlignedHead.from_checkpoint"):
        infinidepth.load_model(gs)
    with pytest.raises(ValueError, match="safetensors"):
        infinidepth.save_model(from_preset("tiny"), tmp_path / "m.pt")


def test_training_input_size_travels_with_the_model(tmp_path):
    from infinidepth import load_model, save_model
    from infinidepth.models import from_preset

    m = from_preset("tiny")
    assert m.input_size is None
    m.input_size = (96, 128)
    save_model(m, tmp_path / "m.safetensors")
    assert load_model(tmp_path / "m.safetensors").input_size == (96, 128)


def _dinov2_paper():
    from infinidepth.models import PaperConfig, ViTConfig

    vit = ViTConfig(embed_dim=64, depth=4, num_heads=2, patch_size=14, position="learned", pos_grid=4,
                    n_storage_tokens=0, key_bias=True, norm_eps=1e-6)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_model("InfiniDepthPaper", PaperConfig(vit=vit, channels=(16, 32, 64), head=(32, 32))).eval()


@pytest.mark.parametrize("which", ["grid-tiny", "dinov2-paper", "paper-other-layers"])
def test_a_training_checkpoint_loads_as_the_model_it_records(tmp_path, which):
    """OUT/checkpoint.pt records the architecture beside the weights; the keys alone do not tell a grid
    baseline, a DINOv2-layout encoder or a paper model's ViT blocks."""
    from infinidepth.models import PRESETS, PaperConfig
    from infinidepth.train.config import TrainConfig
    from infinidepth.train.trainer import save_checkpoint

    if which == "grid-tiny":
        model = from_preset("grid-tiny")
    elif which == "dinov2-paper":
        model = _dinov2_paper()
    else:
        cfg = PRESETS["tiny"][1]
        model = build_model("InfiniDepthPaper", PaperConfig(vit=cfg.vit, channels=cfg.channels, head=cfg.head,
                                                            layers=(0, 1, 2))).eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    size = (4 * model.patch_size, 6 * model.patch_size)
    save_checkpoint(tmp_path / "checkpoint.pt", model, opt, sched, 3, TrainConfig(input_size=size))
    loaded = infinidepth.load_model(tmp_path / "checkpoint.pt")
    assert type(loaded) is type(model) and loaded.config == model.config
    assert loaded.input_size == size
    image = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0))
    coords = torch.rand(1, 20, 2, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert torch.equal(loaded.decode(loaded.encode(image), coords, backend="torch"),
                       model.decode(model.encode(image), coords, backend="torch"))


def test_the_bundled_demo_model_loads_by_name():
    from infinidepth import load_model

    m = load_model("demo")
    assert m.arch == "InfiniDepthPaper" and m.input_size == (96, 128)


def test_a_folder_named_like_the_bundled_model_is_a_clear_error(tmp_path, monkeypatch):
    from infinidepth import load_model

    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()   # e.g. the output folder of an earlier run
    with pytest.raises(CheckpointError, match="is a directory.*bundled model of that name is shadowed"):
        load_model("demo")



def test_lightning_objects_load_inert_and_run_no_code(tmp_path):
    """Hyper-parameter objects that torch's weights-only loader refuses (argparse.Namespace, and
    here one whose unpickling would call os.mkdir) are read as inert stand-ins: the weights load,
    the code does not run."""
    model = from_preset("official-tiny", seed=2)
    marker = tmp_path / "code_ran"
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": {**{f"pipeline.{k}": v for k, v in model.state_dict().items()},
                               "pipeline.aux._extra_state": {"note": "x"}},   # not a tensor: no weight, skipped
                "hyper_parameters": argparse.Namespace(lr=1e-4, trap=RunsCode(marker))}, path)
    with pytest.raises(RefusedPickle, match=f"{path}: not a readable PyTorch checkpoint: it pickles argparse.Namespace, "
                                            "which is not rebuilt"):
        torch_load_weights_only(path)  # what forces the fallback
    loaded = infinidepth.load_model(path)
    assert not marker.exists()
    assert torch.equal(outputs(model), outputs(loaded))


def _ours_with(tmp_path, edit):
    """Our format with its metadata or tensors changed by ``edit(meta_dict, tensors)``."""
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    path = infinidepth.save_model(from_preset("tiny"), tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    sd = load_file(str(path))
    meta = edit(meta, sd)
    save_file(sd, str(path), metadata=meta)
    return path


@pytest.mark.parametrize("edit,match", [
    (lambda m, sd: {"infinidepth": "{not json"}, "not valid JSON"),
    (lambda m, sd: {"infinidepth": json.dumps({k: v for k, v in json.loads(m["infinidepth"]).items() if k != "config"})},
     "does not fit .KeyError"),
    (lambda m, sd: {"infinidepth": json.dumps({**json.loads(m["infinidepth"]), "config": "paper"})}, "does not fit"),
    (lambda m, sd: {"infinidepth": json.dumps({**json.loads(m["infinidepth"]), "config": {"bogus": 1}})}, "does not fit"),
    (lambda m, sd: {"infinidepth": json.dumps({**json.loads(m["infinidepth"]), "input_size": "abc"})}, "input_size"),
    (lambda m, sd: (sd["decoder.mlp.0.bias"].fill_(float("nan")), m)[1], "NaN or infinite values: decoder.mlp.0.bias"),
    (lambda m, sd: (sd["decoder.mlp.0.weight"][0, 0].fill_(-float("inf")), m)[1], "NaN or infinite values: decoder.mlp.0.weight"),
    (lambda m, sd: {"infinidepth": json.dumps([json.loads(m["infinidepth"])])}, "metadata is not a JSON object"),
])
def test_damaged_files_are_checkpoint_errors_naming_the_file(tmp_path, edit, match):
    path = _ours_with(tmp_path, edit)
    with pytest.raises(CheckpointError, match=match) as err:
        infinidepth.load_model(path)
    assert str(path) in str(err.value)


def test_foreign_layout_missing_a_structural_key(tmp_path):
    sd = from_preset("tiny").state_dict()
    sd.pop("reassemble.1.project.weight")
    torch.save(sd, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="m.pt"):
        infinidepth.load_model(tmp_path / "m.pt")


def test_a_file_named_like_a_preset_says_it_shadows_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="shadows the preset"):
        infinidepth.load_model("tiny")
    with pytest.raises(FileNotFoundError, match="bundled: .'demo'"):
        infinidepth.load_model("no-such-model")


def _not_pytorch_files(tmp_path):
    """(file, what its error must say) for files that are not PyTorch checkpoints, or damaged ones."""
    torch.save({"w": torch.arange(64.0)}, tmp_path / "whole.pt")
    torch.save({"w": torch.arange(64.0)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    zipped, legacy = (tmp_path / "whole.pt").read_bytes(), (tmp_path / "legacy.pt").read_bytes()
    cases = {"garbage.pt": (bytes(range(7, 256)) * 4, "not a PyTorch file: those are zip archives or pickles, and it "
                                                      r"starts with b'\\x07\\x08\\t\\n'"),
             "notes.pt": (b"PKG-INFO\nName: x\n", "not a PyTorch file: .* it starts with b'PKG-'"),  # "PK", not a zip
             "cut.pt": (zipped[: len(zipped) // 2], "truncated or damaged PyTorch file.*failed finding central directory"),
             "cut_legacy.pt": (legacy[: len(legacy) // 2], "a truncated or damaged pickle"),
             "empty.pt": (b"", "an empty file")}
    for name, (data, _) in cases.items():
        (tmp_path / name).write_bytes(data)
    return [(tmp_path / name, match) for name, (_, match) in cases.items()]


def test_a_file_that_is_not_a_pytorch_checkpoint_is_one_line_naming_it_and_why(tmp_path):
    """Random bytes, text, a cut download, an empty file: the file and what is wrong with it, on one
    line; not torch's error (its advice on weights_only, miniz, a KeyError of a byte's value)."""
    from infinidepth.gs.train import load_gs_head

    for path, match in _not_pytorch_files(tmp_path):
        for load, what in ((infinidepth.load_model, "PyTorch checkpoint"), (load_gs_head, "GS head")):
            with pytest.raises(CheckpointError, match=match) as err:
                load(path)
            msg = str(err.value)
            assert msg.startswith(f"{path}: not a readable {what} (") and "\n" not in msg, msg
            assert "weights_only" not in msg and "miniz" not in msg, msg
    with pytest.raises(CheckpointError, match=f"{tmp_path}: not a readable PyTorch checkpoint .IsADirectoryError"):
        read_torch_weights(tmp_path)   # e.g. --lpips or a pretrained encoder given a folder


def test_a_pytorch_file_that_is_not_a_gs_head_names_what_it_lacks_and_holds(tmp_path):
    """A depth model's state dict or Lightning file (its hyper-parameters pickled) given as a GS head:
    what a head file has that it lacks, and what it holds; a head of other layers: the keys and shapes."""
    from infinidepth.gs.heads import PointHead
    from infinidepth.gs.train import load_gs_head

    sd = from_preset("tiny").state_dict()
    torch.save(sd, tmp_path / "depth.pt")
    torch.save({"state_dict": {f"pipeline.{k}": v for k, v in sd.items()},
                "hyper_parameters": argparse.Namespace(lr=1e-4)}, tmp_path / "depth.ckpt")
    lacks = "not a GS head written by infinidepth train-gs: it lacks depth_model, feature_dim, head, hidden"
    with pytest.raises(ValueError, match=f"depth.pt: {lacks} \\(it holds _mean, _std, decoder.mlp.0.bias, .*, \\.\\.\\.\\)"):
        load_gs_head(tmp_path / "depth.pt")
    with pytest.raises(ValueError, match=f"depth.ckpt: {lacks} \\(it holds hyper_parameters, state_dict\\)$"):
        load_gs_head(tmp_path / "depth.ckpt")
    head = PointHead(8, 4).state_dict()
    head["extra.weight"] = head.pop("mlp.0.weight")
    head["color.bias"] = torch.zeros(5)
    torch.save({"head": head, "feature_dim": 8, "hidden": 4, "depth_model": "demo"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError) as err:
        load_gs_head(tmp_path / "other.pt")
    msg = str(err.value)
    assert "1 missing keys: mlp.0.weight" in msg and "1 unexpected keys: extra.weight" in msg
    assert "color.bias: file (5,) vs model (3,)" in msg and str(tmp_path / "other.pt") in msg


def test_a_file_with_only_an_extra_key_or_only_a_reshaped_weight_is_refused_naming_it(tmp_path):
    """Strict loading: an extra tensor alone, or a weight of the right size in another shape (a
    transposed matrix), is an error naming it, not ignored nor left to torch's load_state_dict."""
    sd = from_preset("official-tiny").state_dict()
    torch.save({**sd, "pipeline.extra": torch.zeros(2)}, tmp_path / "extra.pt")   # the prefix on one key only
    with pytest.raises(CheckpointError, match="extra.pt does not fit InfiniDepth:\n  1 unexpected keys: pipeline.extra$"):
        infinidepth.load_model(tmp_path / "extra.pt")
    torch.save({**{f"module.{k}": v for k, v in sd.items()}, "extra": torch.zeros(2)}, tmp_path / "ddp.pt")
    with pytest.raises(CheckpointError, match="ddp.pt: unrecognised checkpoint layout \\(first keys: extra, module"):
        infinidepth.load_model(tmp_path / "ddp.pt")
    key = "pretrained.blocks.1.mlp.fc2.weight"   # (no key the architecture is read from)
    rows, cols = sd[key].shape
    assert rows != cols
    torch.save({**sd, key: sd[key].t().contiguous()}, tmp_path / "transposed.pt")
    with pytest.raises(CheckpointError, match=f"1 shape mismatches: {key}: file \\({cols}, {rows}\\) vs model \\({rows}, {cols}\\)$"):
        infinidepth.load_model(tmp_path / "transposed.pt")


def test_the_architecture_is_read_back_from_keys_beyond_the_released_shapes():
    """A ViT with a feed-forward ratio that is not a whole number, and a head of 11 hidden layers (its
    layer numbers past 9, so ordered as numbers, not text)."""
    from infinidepth.models import OfficialConfig, ViTConfig

    cfg = OfficialConfig(vit=ViTConfig(embed_dim=64, depth=2, num_heads=2, ffn_ratio=1.5), cnn_dim=32,
                         hidden=tuple(range(20, 31)))
    with torch.device("meta"):
        sd = build_model("InfiniDepth", cfg).state_dict()
    assert infer_architecture(sd) == ("InfiniDepth", cfg)


def test_save_model_replaces_a_file_only_once_the_new_one_is_whole(tmp_path, monkeypatch):
    """Written beside the target under another name, then renamed: a write that fails midway (a full
    disk) leaves the old file as it was and no temporary; the file gets the mode open() would give."""
    import os

    import safetensors.torch

    old = from_preset("tiny", seed=1)
    umask = os.umask(0o027)
    try:
        path = infinidepth.save_model(old, tmp_path / "m.safetensors")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o640
    written = []

    def disk_full(tensors, filename, metadata=None):
        written.append(Path(filename))
        Path(filename).write_bytes(b"half a fi")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        infinidepth.save_model(from_preset("tiny", seed=2), path)
    assert len(written) == 1 and written[0].parent == tmp_path and written[0].name != path.name
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
    monkeypatch.undo()
    assert torch.equal(outputs(infinidepth.load_model(path)), outputs(old))


def _legacy_torch_file(path, payload: bytes):
    """A file in torch's legacy (pre-zip) format whose object is the raw pickle ``payload``."""
    import pickle

    from torch.serialization import MAGIC_NUMBER, PROTOCOL_VERSION

    head = b"".join(pickle.dumps(v, protocol=2) for v in (MAGIC_NUMBER, PROTOCOL_VERSION, {"little_endian": True}))
    path.write_bytes(head + payload + pickle.dumps([], protocol=2))


def test_inert_loading_calls_no_torch_function_named_by_the_file(tmp_path):
    """The inert fallback rebuilds tensors, and names torch functions only to make stand-ins of them:
    a file that names torch.save, or torch._utils's importer (to reach os.mkdir), runs neither."""
    model = from_preset("official-tiny", seed=2)
    saved = tmp_path / "torch_save_ran"

    class CallsTorchSave:
        def __reduce__(self):
            return torch.save, ({}, str(saved))

    torch.save({"state_dict": {f"pipeline.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"trap": CallsTorchSave()}}, tmp_path / "m.ckpt")
    assert torch.equal(outputs(infinidepth.load_model(tmp_path / "m.ckpt")), outputs(model))
    assert not saved.exists()
    made = tmp_path / "mkdir_ran"

    def text(s):
        return b"X" + len(s.encode()).to_bytes(4, "little") + s.encode()

    # torch._utils._import_dotted_name("os.mkdir")(made)
    _legacy_torch_file(tmp_path / "evil.pt", b"\x80\x02ctorch._utils\n_import_dotted_name\n" + text("os.mkdir") + b"\x85R"
                       + text(str(made)) + b"\x85R.")
    with pytest.raises(CheckpointError, match="evil.pt: not a readable PyTorch checkpoint"):
        infinidepth.load_model(tmp_path / "evil.pt")
    assert not made.exists()


def test_save_model_writes_a_name_at_the_file_systems_limit(tmp_path):
    """Its temporary (hidden, beside the target) once held the whole name and more, so a name that
    open() accepts failed with 'File name too long'; save_model now goes through io.atomic_path."""
    import os

    name = "m" * (os.pathconf(tmp_path, "PC_NAME_MAX") - len(".safetensors")) + ".safetensors"
    path = infinidepth.save_model(from_preset("tiny", seed=1), tmp_path / name)
    assert [p.name for p in tmp_path.iterdir()] == [name] and infinidepth.load_model(path).arch == "InfiniDepthPaper"
