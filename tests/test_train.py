"""Training: targets, configs, bit-for-bit resume after SIGTERM, atomic checkpoints, 2-process DDP
on gloo, pretrained encoders."""

import dataclasses
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import RunsCode

from infinidepth.checkpoint import CheckpointError
from infinidepth.cli import main
from infinidepth.data.procedural import render_set
from infinidepth.models import from_preset
from infinidepth.train import TrainConfig, load_config, make_targets, save_checkpoint, train
from infinidepth.train.config import DataSource
from infinidepth.train.pretrained import load_pretrained_encoder
from infinidepth.train.trainer import build_model


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes") / "set"
    render_set(root, scenes=6, size=(48, 64), progress=False)
    return root


def small_config(scenes, out, **kw):
    base = dict(model="tiny", data=[DataSource("procedural", str(scenes))], input_size=(32, 48), pairs=128,
                batch_size=2, steps=6, lr_encoder=1e-3, lr_decoder=1e-3, warmup_steps=2, checkpoint_every=2,
                log_every=1, num_workers=0, out=str(out))
    base.update(kw)
    return TrainConfig(**base).validate()


# -- targets and configs -----------------------------------------------------------------------------------------
def test_log_depth_targets_put_the_2_and_98_percent_quantiles_at_0_and_1():
    depth = torch.exp(torch.linspace(0, 1, 10001)).reshape(1, 1, 1, -1)      # log-depth uniform on [0, 1]
    valid = torch.ones_like(depth, dtype=torch.bool)
    t = make_targets(torch.tensor([[depth[0, 0, 0, 200].item(), depth[0, 0, 0, 9800].item(), 1.0]]), depth, valid, "log_depth")
    torch.testing.assert_close(t, torch.tensor([[0.0, 1.0, -0.02 / 0.96]]), atol=1e-4, rtol=0)


def test_disparity_targets_are_min_max_normalised():
    depth = torch.tensor([[[[1.0, 2.0, 4.0, 0.0]]]])
    valid = depth > 0
    t = make_targets(torch.tensor([[1.0, 4.0, 2.0]]), depth, valid, "disparity")
    torch.testing.assert_close(t, torch.tensor([[1.0, 0.0, (0.5 - 0.25) / 0.75]]))


@pytest.mark.parametrize("kind", ["log_depth", "disparity"])
def test_targets_of_an_image_of_one_depth_stay_near_0(kind):
    """A flat wall filling the crop: its pairs differ from its depth by float32 rounding only (the
    bilinear sampler's), and must not become targets of thousands (the range was floored at 1e-12)."""
    depth = torch.full((1, 1, 8, 8), 2.7)
    wall = depth[0, 0, 0, 0]
    pairs = torch.stack([wall, torch.nextafter(wall, torch.tensor(9.0)), torch.nextafter(wall, torch.tensor(0.0))])[None]
    t = make_targets(pairs, depth, depth > 0, kind)
    assert t.abs().max() < 1e-3


@pytest.mark.parametrize("kind", ["log_depth", "disparity"])
def test_each_step_is_the_l1_between_the_output_at_the_batch_queries_and_the_normalised_targets(scenes, tmp_path,
                                                                                            monkeypatch, kind):
    """The network sees the batch's image and its (y, x) queries, and the loss is the mean absolute
    difference between its raw output there and each pair's target, normalised per image over its
    valid ground truth (log-depth: 2% and 98% quantiles to 0 and 1; disparity: min and max to 0 and
    1), computed here with NumPy from the batch."""
    from infinidepth import data
    from infinidepth.train import trainer

    batches, calls, losses = [], [], []
    real_collate, real_build = data.collate, trainer.build_model
    monkeypatch.setattr(data, "collate", lambda samples: batches.append(real_collate(samples)) or batches[-1])

    def build(cfg):
        model = real_build(cfg)
        model.register_forward_hook(lambda module, args, out: calls.append((args, out.detach().double().numpy())))
        return model

    monkeypatch.setattr(trainer, "build_model", build)
    train(small_config(scenes, tmp_path / "run", steps=2, target=kind), progress=False,
          on_step=lambda step, loss: losses.append(loss))
    assert len(batches) == len(calls) == len(losses) == 2
    for batch, ((image, coords), pred), loss in zip(batches, calls, losses):
        assert torch.equal(image, batch["image"]) and torch.equal(coords, batch["coords"])
        targets = []
        for b in range(len(coords)):
            truth = batch["depth"][b][batch["valid"][b]].double().numpy()
            pairs = batch["coord_depth"][b].double().numpy()
            if kind == "log_depth":
                lo, hi = np.quantile(np.log(truth), [0.02, 0.98])
                targets.append((np.log(pairs) - lo) / (hi - lo))
            else:
                lo, hi = 1 / truth.max(), 1 / truth.min()
                targets.append((1 / pairs - lo) / (hi - lo))
        assert loss == pytest.approx(np.abs(pred - np.stack(targets)).mean(), rel=1e-5)


def test_configs_from_presets_and_yaml(tmp_path):
    assert load_config("paper").model == "paper-large" and load_config("official").target == "disparity"
    path = tmp_path / "run.yaml"
    path.write_text("base: demo\nsteps: 7\ndata: [{name: procedural, root: /x}]\ninput_size: [64, 80]\n")
    cfg = load_config(str(path), out="elsewhere")
    assert cfg.steps == 7 and cfg.input_size == (64, 80) and cfg.out == "elsewhere" and cfg.pairs == load_config("demo").pairs
    path.write_text("base: demo\nstep: 7\n")
    with pytest.raises(ValueError, match="unknown config keys: step"):
        load_config(str(path))
    path.write_text("base: demo\ninput_size: [0, 80]\nbatch_size: 0\n")
    with pytest.raises(ValueError, match="input_size must be positive") as e:
        load_config(str(path))
    assert "batch_size must be positive" in str(e.value)
    # multiples of the model's patch, known once it is built (16 for tiny; 8 for the demo's mini)
    with pytest.raises(ValueError, match="multiples of the encoder's patch, 16: got 60x80 \\(nearest: 64x80\\)"):
        build_model(dataclasses.replace(cfg, model="tiny", input_size=(60, 80)))
    assert build_model(dataclasses.replace(cfg, model="mini", input_size=(56, 80))).patch_size == 8
    with pytest.raises(FileNotFoundError, match="presets"):
        load_config("nonexistent.yaml")


BAD_VALUES = [  # (YAML lines over `base: demo`, what the error must say)
    ("steps: two", "steps must be a whole number, got 'two'"),
    ("steps: 2.5", "steps must be a whole number, got 2.5"),
    ("steps: true", "steps must be a whole number, got True"),             # a bool is not a count
    ('pairs: "256"', "pairs must be a whole number, got '256'"),
    ("lr_decoder: abc", "lr_decoder must be a number, got 'abc'"),
    ("lr_decoder: .nan", "lr_decoder must be a finite number, got nan"),
    ("lr_encoder: -.inf", "lr_encoder must be a finite number, got -inf"),
    ("weight_decay: -1", "weight_decay must be 0 or more, got -1"),
    ("grad_clip: -0.5", "grad_clip must be 0 or more, got -0.5"),
    ("warmup_steps: -1", "warmup_steps must be 0 or more, got -1"),
    ("num_workers: -2", "num_workers must be 0 or more, got -2"),
    ("seed: -1", r"seed must be in \[0, 4294967295\], got -1"),
    ("input_size: 64", r"input_size must be \[height, width\], two whole numbers, got 64"),
    ("input_size: [64]", r"input_size must be \[height, width\], two whole numbers, got \[64\]"),
    ("input_size: [64, 80.5]", r"input_size must be \[height, width\], two whole numbers"),
    ("augment_scale: [2.0, 0.1]", r"augment_scale must be \[min, max\] with 0 < min <= max <= 1, got \[2.0, 0.1\]"),
    ("augment_scale: [0.1, 1.5]", r"augment_scale must be \[min, max\] with 0 < min <= max <= 1"),
    ("augment_flip: maybe", "augment_flip must be true or false, got 'maybe'"),
    ("augment_color: -3", r"augment_color must be in \[0, 1\], got -3"),
    ("out: 5", r"out must be a folder path \(text\), got 5"),
    ("target: depth", "target must be auto, log_depth or disparity, got 'depth'"),
    ("precision: fp8", "precision must be auto, fp32, bf16 or fp16, got 'fp8'"),
    ("model: no_such_model", "model must be a model preset .* or a model file; there is no file 'no_such_model'"),
    ("pretrained_encoder: none.pth", "pretrained_encoder: no file 'none.pth'"),
    ("data: hello", r"data must be a list of sources such as \[\{name: procedural, root: data/procedural\}\], got 'hello'"),
    ("data: [hello]", r"data\[0\] must be a mapping such as \{name: procedural, root: data/procedural\}, got 'hello'"),
    ("data: [{root: x}]", r"data\[0\] needs a name"),
    ("data: [{name: procedural}]", r"data\[0\]: data source 'procedural' needs a root folder"),
    ("data: [{name: nope, root: /x}]", r"unknown data source 'nope' \(data\[0\]\); choose from \[.*'procedural'.*\] or procedural-live"),
    ("data: [{name: procedural-live, scenes: ten}]", r"data\[0\].scenes \(procedural-live: how many scenes\) must be a whole number, got 'ten'"),
    ("data: [{name: procedural-live, scenes: 0}]", r"data\[0\].scenes .* must be positive, got 0"),
    ("data: [{name: procedural-live, scenes: 4, render_size: 5}]", r"data\[0\].render_size must be \[height, width\], two whole numbers, got 5"),
    # fields of the other kind of source, which it would ignore
    ("data: [{name: procedural, root: /x, scenes: 10}]", r"data\[0\]: scenes and render_size are for procedural-live; 'procedural' reads"),
    ("data: [{name: hypersim, root: /x, render_size: [96, 128]}]", r"data\[0\]: scenes and render_size are for procedural-live"),
    ("data: [{name: procedural-live, scenes: 4, root: /x}]", r"data\[0\]: procedural-live renders its scenes and reads no root folder, got root '/x'"),
    ("base: [demo]", r"unknown base preset \['demo'\]"),
    ("steps: 5\nlr_decoder: 1e-3\nsteps: 7", "not valid YAML .*keys given twice: steps"),     # not silently the last
    ("data: [{name: procedural, root: a, root: b}]", "keys given twice: root"),
]


@pytest.mark.parametrize("line,message", BAD_VALUES, ids=[line for line, _ in BAD_VALUES])
def test_config_refuses_bad_values_naming_the_field(tmp_path, line, message):
    path = tmp_path / "run.yaml"
    path.write_text(f"{line}\n" if line.startswith("base:") else f"base: demo\n{line}\n")
    with pytest.raises(ValueError, match=message):
        load_config(str(path))


def test_config_takes_yaml_merge_keys(tmp_path):
    """<<: *anchor is not a key given twice: sources sharing settings through an anchor load, and a
    key of the anchored mapping may be overridden."""
    path = tmp_path / "run.yaml"
    path.write_text("base: demo\ndata: [&s {name: procedural, root: a}, {<<: *s, root: b}]\n")
    cfg = load_config(str(path))
    assert [(d.name, d.root) for d in cfg.data] == [("procedural", "a"), ("procedural", "b")]


def test_config_lists_every_bad_field_and_accepts_good_values(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("base: demo\nsteps: 0.5\nseed: -1\naugment_flip: 1\n")
    with pytest.raises(ValueError) as e:
        load_config(str(path))
    assert [line.split(" must")[0].strip() for line in str(e.value).splitlines()[1:]] == ["steps", "seed", "augment_flip"]
    path.write_text("base: demo\ndata: [{name: procedural-live, scenes: 4, render_size: [48, 64]}, {name: procedural, root: x}]\n"
                    "input_size: [64, 80]\naugment_scale: [0.5, 1]\naugment_flip: false\naugment_color: 0\nlr_encoder: 0\n"
                    "grad_clip: 0\nwarmup_steps: 0\nseed: 4294967295\nlr_decoder: 1e-4\nweight_decay: 5E-2\n")
    cfg = load_config(str(path))
    assert cfg.lr_decoder == 1e-4 and cfg.weight_decay == 0.05        # numbers, though PyYAML alone reads strings
    assert cfg.data[0].render_size == (48, 64) and cfg.input_size == (64, 80) and cfg.augment_scale == (0.5, 1)
    assert cfg.augment_flip is False and cfg.seed == 2**32 - 1
    # built in Python, lists become tuples (so resuming compares equal to the checkpoint's config)
    assert TrainConfig(data=[DataSource("procedural", "x")], input_size=[32, 48]).validate().input_size == (32, 48)


def test_fp16_needs_a_gpu(tmp_path, monkeypatch):
    """As inference: fp16 on the CPU is refused up front (with a GPU the same config passes)."""
    path = tmp_path / "run.yaml"
    path.write_text("base: demo\nprecision: fp16\n")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="precision fp16 needs a CUDA device, and there is none here; on the CPU use fp32"):
        load_config(str(path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert load_config(str(path)).precision == "fp16"


def test_model_and_data_problems_stop_training_before_any_file(scenes, tmp_path):
    """Checks that need the model (its patch) or the data are made at the start of train(), as
    ValueErrors, before OUT is created."""
    with pytest.raises(ValueError, match="multiples of the encoder's patch, 16: got 60x60 \\(nearest: 64x64\\)"):
        train(small_config(scenes, tmp_path / "patch", input_size=(60, 60)), progress=False)
    with pytest.raises(ValueError, match="is not a directory"):
        train(small_config(scenes, tmp_path / "root", data=[DataSource("procedural", str(tmp_path / "none"))]), progress=False)
    with pytest.raises(ValueError, match="6 frames are too few for batch_size 8"):
        train(small_config(scenes, tmp_path / "few", batch_size=8), progress=False)
    bad = dataclasses.replace(small_config(scenes, tmp_path / "source"), data=[DataSource("nope", "x")])
    with pytest.raises(ValueError, match="unknown data source 'nope'"):
        train(bad, progress=False)
    assert not any((tmp_path / name).exists() for name in ("patch", "root", "few", "source"))


# -- resume and checkpoints -----------------------------------------------------------------------------------------
def test_resume_after_sigterm_continues_bit_for_bit(scenes, tmp_path):
    whole = train(small_config(scenes, tmp_path / "whole"), progress=False)
    assert [s for s, _, _ in whole["losses"]] == list(range(1, 7))

    # 6 frames, batches of 2: 3 steps per epoch; stopping at step 4 resumes in the middle of epoch 1
    def stop_at_4(step, loss):
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    cfg = small_config(scenes, tmp_path / "cut")
    first = train(cfg, progress=False, on_step=stop_at_4)
    assert first["interrupted"] and first["step"] == 4
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)["step"] == 4
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    second = train(cfg, resume=True, progress=False)
    assert second["step"] == 6 and not second["interrupted"]
    assert first["losses"] + second["losses"] == whole["losses"]          # exact floats
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line)["step"] for line in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert log == list(range(1, 7))                                       # no duplicated lines after resume


def test_a_resumed_run_continues_torchs_numpys_and_pythons_random_streams(scenes, tmp_path):
    """The checkpoint keeps the global random states: draws made during training (here by on_step)
    go on after a resume as in the uninterrupted run. Cut at the end of epoch 0 (3 steps): the next
    epoch's DataLoader takes its one torch draw in both runs."""
    def recording(into, stop_at=None):
        def on_step(step, loss):
            into.append((step, torch.rand(()).item(), float(np.random.rand()), random.random()))
            if step == stop_at:
                os.kill(os.getpid(), signal.SIGTERM)
        return on_step

    whole, cut = [], []
    train(small_config(scenes, tmp_path / "whole", steps=4), progress=False, on_step=recording(whole))
    cfg = small_config(scenes, tmp_path / "cut", steps=4)
    assert train(cfg, progress=False, on_step=recording(cut, stop_at=3))["step"] == 3
    train(cfg, resume=True, progress=False, on_step=recording(cut))
    assert [s for s, *_ in cut] == [1, 2, 3, 4] and cut == whole


def test_a_moved_run_resumes_with_other_workers_and_saving_and_the_same_result(scenes, tmp_path):
    """out, num_workers, log_every and checkpoint_every change nothing the run computes: a run folder
    copied elsewhere continues there, on another number of data workers, to the same losses."""
    import shutil

    whole = train(small_config(scenes, tmp_path / "whole", steps=4), progress=False)
    first = train(small_config(scenes, tmp_path / "cut", steps=4), progress=False,
                  on_step=lambda step, loss: step == 2 and os.kill(os.getpid(), signal.SIGTERM))
    shutil.copytree(tmp_path / "cut", tmp_path / "moved")
    moved = small_config(scenes, tmp_path / "moved", steps=4, num_workers=1, log_every=2, checkpoint_every=3)
    second = train(moved, resume=True, progress=False)
    assert first["step"] == 2 and first["losses"] + second["losses"] == whole["losses"]


def test_a_signal_during_the_last_step_says_the_run_is_complete(scenes, tmp_path, caplog):
    """Stopped at the last step, the run has written its model: the log says so, not 'continue with
    --resume' (which would then refuse: nothing is left to do)."""
    cfg = small_config(scenes, tmp_path / "run", steps=2)
    with caplog.at_level(logging.WARNING, logger="infinidepth.train"):
        result = train(cfg, progress=False, on_step=lambda step, loss: step == 2 and os.kill(os.getpid(), signal.SIGTERM))
    assert result["step"] == 2 and (tmp_path / "run" / "model.safetensors").is_file()
    assert not result["interrupted"]   # finished: the command exits 0
    assert "the run is complete" in caplog.text and "--resume" not in caplog.text


def test_a_log_line_cut_short_by_a_crash_does_not_stop_the_resume(scenes, tmp_path):
    """A run killed while appending to log.jsonl leaves a partial last line: the resume drops it
    with the lines past the checkpoint, instead of failing to parse it."""
    cfg = small_config(scenes, tmp_path / "run", steps=4)
    train(cfg, progress=False, on_step=lambda step, loss: step == 2 and os.kill(os.getpid(), signal.SIGTERM))
    log_path = tmp_path / "run" / "log.jsonl"
    with open(log_path, "a") as f:
        f.write('{"step": 3, "loss": 0.4')                               # killed mid-write
    assert train(cfg, resume=True, progress=False)["step"] == 4
    assert [json.loads(line)["step"] for line in log_path.read_text().splitlines()] == [1, 2, 3, 4]


def test_fp16_resume_continues_from_the_saved_loss_scale(scenes, tmp_path, monkeypatch):
    """fp16's GradScaler state is part of the checkpoint: a resume that restarted from the initial
    scale would skip again the overflowing steps the uninterrupted run had already halved past.
    (fp16 on the CPU only here: its config check wants a GPU, so validation is bypassed.)"""
    monkeypatch.setattr(TrainConfig, "validate", lambda self: self)
    real_init, real_update, scales = torch.amp.GradScaler.__init__, torch.amp.GradScaler.update, []

    def init(self, *a, **k):                     # high enough to overflow for the first steps
        real_init(self, *a, **{**k, "init_scale": 2.0 ** 20})

    def update(self, *a, **k):
        real_update(self, *a, **k)
        scales.append(self.get_scale())

    monkeypatch.setattr(torch.amp.GradScaler, "__init__", init)
    monkeypatch.setattr(torch.amp.GradScaler, "update", update)

    def fp16(out):
        return dataclasses.replace(small_config(scenes, out, steps=8, checkpoint_every=4), precision="fp16")

    with warnings.catch_warnings():   # the first steps are skipped: torch's warning about the order of calls is not ours
        warnings.simplefilter("error", UserWarning)
        whole = train(fp16(tmp_path / "whole"), progress=False)
    whole_scales, scales[:] = list(scales), []
    assert whole_scales[3] < 2.0 ** 20                                  # the scale did fall before step 4
    cfg = fp16(tmp_path / "cut")
    first = train(cfg, progress=False, on_step=lambda step, loss: step == 4 and os.kill(os.getpid(), signal.SIGTERM))
    second = train(cfg, resume=True, progress=False)
    assert scales == whole_scales
    assert first["losses"] + second["losses"] == whole["losses"]


def test_each_step_uses_and_logs_its_warm_up_and_cosine_rates_per_group(scenes, tmp_path, monkeypatch):
    """Warm-up 2 of 4 steps: factors 1/2, 1, then cosine from 1 (1, 1/2). The rates logged for a step
    are those the optimiser applied at it (not the next step's), for both groups."""
    used, real_step = [], torch.optim.AdamW.step

    def step(self, *a, **k):
        used.append([g["lr"] for g in self.param_groups])
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    result = train(small_config(scenes, tmp_path / "run", steps=4, lr_encoder=1e-4, lr_decoder=1e-3), progress=False)
    want = [0.5, 1.0, 1.0, 0.5]
    assert sum(used, []) == pytest.approx(sum([[1e-4 * f, 1e-3 * f] for f in want], []))
    assert [lr for _, _, lr in result["losses"]] == pytest.approx([1e-3 * f for f in want])
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [[r["lr_encoder"], r["lr"]] for r in log] == used


def test_the_optimiser_steps_with_gradients_clipped_to_grad_clip(scenes, tmp_path, monkeypatch):
    """The whole gradient's norm at each optimiser step is at most grad_clip; unclipped (grad_clip 0)
    the same steps' norms are far above it, so the check can fail."""
    norms, real_step = [], torch.optim.AdamW.step

    def step(self, *a, **k):
        grads = [p.grad.flatten() for g in self.param_groups for p in g["params"] if p.grad is not None]
        norms.append(float(torch.cat(grads).double().norm()))
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    train(small_config(scenes, tmp_path / "free", steps=2, grad_clip=0.0), progress=False)
    free, norms[:] = list(norms), []
    train(small_config(scenes, tmp_path / "clipped", steps=2, grad_clip=1e-3), progress=False)
    assert len(free) == len(norms) == 2 and min(free) > 1e-2
    assert max(norms) <= 1e-3 * (1 + 1e-5)


def test_a_warm_up_as_long_as_the_run_is_said(scenes, tmp_path, caplog):
    """warmup_steps at or above steps (a short run on a preset's 100-step warm-up) trains, but the
    rates never reach their set values: the log says so, naming both numbers."""
    with caplog.at_level(logging.WARNING, logger="infinidepth.train"):
        train(small_config(scenes, tmp_path / "short", steps=2, warmup_steps=2), progress=False)
    assert "warmup_steps (2) is not below steps (2)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="infinidepth.train"):
        train(small_config(scenes, tmp_path / "ok", steps=3, warmup_steps=2), progress=False)
    assert "warmup_steps" not in caplog.text


def test_training_lowers_the_loss_and_refuses_to_overwrite_a_run(scenes, tmp_path):
    cfg = small_config(scenes, tmp_path / "run", steps=40, batch_size=3, checkpoint_every=40)
    result = train(cfg, progress=False)
    losses = [v for _, v, _ in result["losses"]]
    assert sum(losses[-10:]) < sum(losses[:10])
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, progress=False)
    changed = small_config(scenes, tmp_path / "run", steps=40, batch_size=2, checkpoint_every=40)
    with pytest.raises(ValueError, match="--resume: the config differs from the checkpoint's in batch_size$"):
        train(changed, resume=True, progress=False)
    # a longer run is another schedule: refused, saying why and how to go on from the trained weights
    longer = small_config(scenes, tmp_path / "run", steps=80, batch_size=3, checkpoint_every=40)
    with pytest.raises(ValueError, match="differs from the checkpoint's in steps; steps sets the learning-rate schedule.*"
                                         "start a new run with another --out and model: .*model.safetensors"):
        train(longer, resume=True, progress=False)


def test_resume_refuses_missing_damaged_and_foreign_checkpoints(tmp_path):
    cfg = TrainConfig(data=[DataSource("procedural", "x")], out=str(tmp_path)).validate()
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(ValueError, match="--resume: no checkpoint at .*checkpoint.pt"):
        train(cfg, resume=True, progress=False)
    model = from_preset("tiny")
    opt = torch.optim.AdamW(model.parameters())
    save_checkpoint(path, model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), 5, cfg)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])             # truncated
    with pytest.raises(ValueError, match=r"--resume: .*checkpoint.pt: not a readable training checkpoint \(a truncated or damaged") as damaged:
        train(cfg, resume=True, progress=False)
    assert str(damaged.value).count(str(path)) == 1 and "\n" not in str(damaged.value)   # the file named once, on one line
    torch.save({"model": {}}, path)
    with pytest.raises(ValueError, match="checkpoint.pt is not a checkpoint of infinidepth train \\(it lacks optimizer"):
        train(cfg, resume=True, progress=False)
    torch.save({"model": {}, "trap": RunsCode(tmp_path / "code_ran")}, path)    # a file that names code to run
    with pytest.raises(ValueError, match="checkpoint.pt: not a readable training checkpoint: it pickles \\S*mkdir, which "
                                         "is not rebuilt") as refused:   # (not torch's advice to load it with weights_only=False)
        train(cfg, resume=True, progress=False)
    assert "weights_only" not in str(refused.value) and str(refused.value).count(str(path)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]     # nothing else written, nothing run


def nan_targets_from(call: int, monkeypatch):
    """make_targets gives NaN targets from its ``call``-th call (one call per step) on."""
    from infinidepth.train import trainer

    real, calls = trainer.make_targets, []

    def targets(*a, **k):
        calls.append(1)
        t = real(*a, **k)
        return t * float("nan") if len(calls) >= call else t

    monkeypatch.setattr(trainer, "make_targets", targets)


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(scenes, tmp_path, monkeypatch):
    from infinidepth.train import TrainingDiverged

    nan_targets_from(3, monkeypatch)
    cfg = small_config(scenes, tmp_path / "run", checkpoint_every=2)
    with pytest.raises(TrainingDiverged, match="training stopped at step 3: the loss is nan; this step was not applied or "
                                               "saved \\(.*checkpoint.pt holds step 2, the last good one\\)"):
        train(cfg, progress=False)
    assert issubclass(TrainingDiverged, ValueError)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (tmp_path / "run" / "model.safetensors").exists()
    assert [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()] == [1, 2]
    # before the first checkpoint there is none to keep, and the message says so
    nan_targets_from(1, monkeypatch)
    with pytest.raises(TrainingDiverged, match="step 1: the loss is nan; .*no checkpoint was written"):
        train(small_config(scenes, tmp_path / "first", checkpoint_every=2), progress=False)
    assert not (tmp_path / "first" / "checkpoint.pt").exists()


def test_non_finite_weights_are_never_saved(scenes, tmp_path, monkeypatch):
    from infinidepth.train import TrainingDiverged, trainer

    built, real_build = [], trainer.build_model
    monkeypatch.setattr(trainer, "build_model", lambda cfg: built.append(real_build(cfg)) or built[-1])

    def poison_at_4(step, loss):         # runs before step 4's checkpoint would be written
        if step == 4:
            with torch.no_grad():
                next(built[0].parameters()).fill_(float("inf"))

    with pytest.raises(TrainingDiverged, match="training stopped at step 4: 1 weight tensors hold NaN or infinite values "
                                               ".*not saved \\(.*checkpoint.pt holds step 2, the last good one\\)"):
        train(small_config(scenes, tmp_path / "run", checkpoint_every=2), progress=False, on_step=poison_at_4)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["step"] == 2
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_a_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = from_preset("tiny")
    cfg = TrainConfig(data=[DataSource("procedural", "x")], out=str(tmp_path))
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model, opt, sched, 5, cfg)
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, opt, sched, 6, cfg)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(path, weights_only=False)["step"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


SIGNALLING_WORKER = """
import os, signal, sys
from pathlib import Path
import torch
from infinidepth.cli import main
from infinidepth.train import trainer

flag, real = Path(sys.argv[1]), trainer.build_dataset

class Signalling:  # once both data workers of an epoch load samples, one sends SIGTERM to the process group
    def __init__(self, inner):
        self.inner = inner
    def __len__(self):
        return len(self.inner)
    def set_epoch(self, epoch):
        self.inner.set_epoch(epoch)
    def __getitem__(self, i):
        (flag.parent / f"loading-{self.inner.datasets[0].epoch}-{torch.utils.data.get_worker_info().id}").touch()
        both = all((flag.parent / f"loading-{self.inner.datasets[0].epoch}-{w}").exists() for w in (0, 1))
        if both and not flag.exists():
            flag.touch()
            os.killpg(0, signal.SIGTERM)
        return self.inner[i]

trainer.build_dataset = lambda cfg: Signalling(real(cfg))
sys.exit(main(["train", *sys.argv[2:]]))
"""


def test_sigterm_to_the_process_group_with_data_workers_still_checkpoints(scenes, tmp_path):
    """Ctrl-C, a batch system's cancel and torchrun's shutdown signal every process of the group, the
    DataLoader workers too: they used to die of it, and the run with them, without its checkpoint."""
    import yaml

    cfg = small_config(scenes, tmp_path / "run", steps=30, checkpoint_every=30, num_workers=2).to_dict()
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(cfg))))
    (tmp_path / "driver.py").write_text(SIGNALLING_WORKER)
    proc = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "signalled"), "--config",
                           str(tmp_path / "run.yaml"), "--quiet"], start_new_session=True, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert (tmp_path / "signalled").exists()
    assert proc.returncode == 143, proc.stderr[-3000:]   # unfinished: `train && eval` must not go on
    assert "stopped by signal 15" in proc.stderr
    step = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["step"]
    assert 1 <= step < 30 and json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])["step"] == step


# -- two processes ---------------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ranks_take_disjoint_shares_of_each_epoch_and_every_epoch_is_reshuffled():
    """The data order of K processes: in each epoch the ranks' shares are disjoint (11 frames, 2 ranks,
    drop_last: 5 each), each epoch is another order, and a resume at batch k of an epoch goes on
    with that epoch's batch k."""
    from infinidepth.train.trainer import _Position

    def share(rank, epoch, start=0):
        sampler = _Position(11, 2, rank, seed=3, batch=2)
        sampler.set_position(epoch, start)
        return list(sampler)

    for epoch in range(3):
        a, b = share(0, epoch), share(1, epoch)
        assert len(a) == len(b) == 5 and not set(a) & set(b) and set(a) | set(b) <= set(range(11))
        assert share(0, epoch, start=1) == a[2:] and share(1, epoch, start=2) == b[4:]
    assert len({tuple(share(0, epoch)) for epoch in range(3)}) == 3


def test_two_process_ddp_on_gloo(scenes, tmp_path):
    import yaml

    cfg = small_config(scenes, tmp_path / "ddp", steps=3, checkpoint_every=3).to_dict()
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(json.loads(json.dumps(cfg))))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
                           "-m", "infinidepth.train", "--config", str(path), "--quiet"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads(line) for line in (tmp_path / "ddp" / "ranks.jsonl").read_text().splitlines()]
    assert sorted(r["rank"] for r in ranks) == [0, 1]
    assert ranks[0]["param_sum"] == ranks[1]["param_sum"]                 # replicas stay identical
    assert all(r["samples"] == 3 * 2 for r in ranks)                       # each its own share of the data
    log = [json.loads(line) for line in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert [r["world_size"] for r in log] == [2, 2, 2]
    assert torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=False)["step"] == 3


ONE_RANK_SIGNALLED = """
import os, signal, sys
from infinidepth.train import load_config, train


def on_step(step, loss):  # only rank 1 is told to stop, after step 2 (its loss already agreed on)
    if step == 2 and os.environ["RANK"] == "1":
        os.kill(os.getpid(), signal.SIGTERM)

result = train(load_config(sys.argv[1]), progress=False, on_step=on_step)
sys.exit(0 if result["interrupted"] else 3)
"""


def test_ddp_ranks_agree_on_a_stop_signal_that_reached_one_of_them(scenes, tmp_path):
    """The ranks decide together: a signal seen by one rank stops all after the same step (here 3),
    with the checkpoint of that step; alone, rank 1 stopped after step 2 and rank 0 went on into
    collectives that never matched."""
    import yaml

    cfg = small_config(scenes, tmp_path / "ddp", steps=5, checkpoint_every=5).to_dict()
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(cfg))))
    (tmp_path / "driver.py").write_text(ONE_RANK_SIGNALLED)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
                           str(tmp_path / "driver.py"), str(tmp_path / "ddp.yaml")],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads(line) for line in (tmp_path / "ddp" / "ranks.jsonl").read_text().splitlines()]
    assert [r["step"] for r in ranks] == [3, 3] and ranks[0]["param_sum"] == ranks[1]["param_sum"]
    assert torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=False)["step"] == 3


# -- pretrained encoders and the command ----------------------------------------------------------------------------------------
def test_dinov3_encoder_loads_key_for_key(tmp_path):
    donor = from_preset("tiny", seed=3)
    sd = {f"teacher.backbone.{k}": v for k, v in donor.encoder.state_dict().items()}
    sd["teacher.backbone.head.weight"] = torch.zeros(3)          # a DINO head: ignored
    torch.save({"teacher": sd}, tmp_path / "dinov3.pth")
    model = from_preset("tiny", seed=4)
    load_pretrained_encoder(model, tmp_path / "dinov3.pth")
    assert all(torch.equal(a, b) for a, b in zip(model.encoder.state_dict().values(), donor.encoder.state_dict().values()))
    assert not torch.equal(model.decoder.mlp[0].weight, donor.decoder.mlp[0].weight)   # only the encoder
    torch.save(from_preset("paper-small").encoder.state_dict(), tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_pretrained_encoder(model, tmp_path / "other.pth")


DINOV2_FIXTURE = Path(__file__).parent / "data" / "dinov2_tiny.safetensors"


def dinov2_backbone(name: str) -> tuple[dict, dict]:
    """A tiny DINOv2 backbone's state dict and, per input size, (image, DINOv2's own output):
    tests/data/make_dinov2_fixture.py ran facebookresearch/dinov2's code to make them."""
    from safetensors.torch import load_file

    fixture = load_file(DINOV2_FIXTURE)
    sd = {k.split("/", 1)[1]: v for k, v in fixture.items() if k.startswith(name + "/") and "/out_" not in k}
    cases = {k.split("_", 1)[1]: (v.float() / 255, fixture[f"{name}/out_{k.split('_', 1)[1]}"])
             for k, v in fixture.items() if k.startswith("input_")}
    return sd, cases


def tiny_paper_model():
    from infinidepth.models import InfiniDepthPaper, PaperConfig
    from infinidepth.models.vit import ViTConfig

    return InfiniDepthPaper(PaperConfig(vit=ViTConfig(embed_dim=16, depth=2, num_heads=2), channels=(8, 8, 8), head=(8,)))


@pytest.mark.parametrize("name,chunk", [("plain", 0), ("reg4", 0), ("plain", 1), ("plain", 2)])
def test_dinov2_backbone_loads_and_matches_dinov2s_own_outputs(tmp_path, name, chunk):
    """A DINOv2 file rebuilds the encoder in DINOv2's layout (learned positions resized per input,
    registers, patch 14); its patch tokens match DINOv2's code at the grid's own size, larger,
    smaller and oblong inputs. fp32, within 2e-6 of their spread: DINOv2 runs the same ops, so only
    rounding may differ (LayerNorm eps 1e-5 instead of DINOv2's 1e-6 already exceeds it). Training
    checkpoints chunk the blocks (``chunk`` blocks per chunk; 0: not chunked)."""
    from infinidepth.checkpoint import load_model, save_model

    sd, cases = dinov2_backbone(name)
    if chunk:  # FSDP chunks: blocks.<chunk>.<block index, counted over all chunks>
        sd = {(f"blocks.{int(k.split('.')[1]) // chunk}.{k.split('.', 1)[1]}" if k.startswith("blocks.") else k): v
              for k, v in sd.items()}
    torch.save({"teacher": {f"backbone.{k}": v for k, v in sd.items()}}, tmp_path / "dinov2.pth")
    model = tiny_paper_model()
    load_pretrained_encoder(model, tmp_path / "dinov2.pth")
    vit = model.encoder.config
    assert (vit.position, vit.patch_size, vit.pos_grid, vit.n_storage_tokens) == ("learned", 14, 3, 4 if name == "reg4" else 0)
    assert model.patch_size == 14 and model.config.vit == vit
    for size, (image, want) in cases.items():
        with torch.no_grad():
            got = torch.stack(model.encoder.intermediate_layers(image, [0, 1]))
        assert got.shape == want.shape, size
        err = float((got - want).abs().max() / want.std())
        assert err < 2e-6, f"{name} at {size}: max error {err:.2e} of the tokens' spread"
    # the whole model runs at multiples of 14, and saves and loads as a DINOv2-layout model
    image = cases["56x84"][0]
    depth = model.predict(image, output_size=(20, 30))
    assert depth.shape == (1, 1, 20, 30) and torch.isfinite(depth).all()
    save_model(model, tmp_path / "m.safetensors")
    again = load_model(tmp_path / "m.safetensors")
    assert again.encoder.config == vit and torch.equal(again.predict(image, output_size=(20, 30)), depth)
    with pytest.raises(ValueError, match="multiples of 14"):
        model.predict(torch.rand(1, 3, 48, 64))
    if name == "plain" and not chunk:  # bench's default input: 768x1024 to multiples of 14
        from infinidepth.bench import bench

        assert bench(model, [("tiny", (14, 14))], torch.device("cpu"), ["torch"], warmup=False, progress=False)["input"] == [770, 1022]
        # predict's default input for a 30x40 picture: aspect kept, multiples of 14 (28x42), not of 16
        from PIL import Image

        Image.fromarray((image[0].permute(1, 2, 0).numpy()[:30, :40] * 255).astype("uint8")).save(tmp_path / "pic.png")
        assert main(["predict", str(tmp_path / "pic.png"), "--checkpoint", str(tmp_path / "m.safetensors"),
                     "--out", str(tmp_path / "out"), "--quiet"]) == 0
        assert np.load(tmp_path / "out" / "pic_depth.npy").shape == (30, 40)


def test_a_dinov2_file_without_layerscale_loads_as_layerscale_1(tmp_path):
    """DINOv2 built without LayerScale (init_values None) saves no ls1/ls2 gammas: its blocks add the
    attention and MLP outputs unscaled, which is LayerScale 1."""
    sd, _ = dinov2_backbone("plain")
    torch.save({k: v for k, v in sd.items() if ".ls1." not in k and ".ls2." not in k}, tmp_path / "no_layerscale.pth")
    model = tiny_paper_model()
    load_pretrained_encoder(model, tmp_path / "no_layerscale.pth")
    gammas = {k: v for k, v in model.encoder.state_dict().items() if k.endswith(("ls1.gamma", "ls2.gamma"))}
    assert len(gammas) == 4 and all(torch.equal(v, torch.ones(16)) for v in gammas.values())
    assert torch.equal(model.encoder.blocks[1].mlp.fc2.weight, sd["blocks.1.mlp.fc2.weight"])


def test_training_starts_from_a_dinov2_backbone(scenes, tmp_path):
    """pretrained_encoder: a DINOv2 file; the input size must then be multiples of 14, and the
    trained model is saved with its DINOv2-layout encoder."""
    from infinidepth.checkpoint import load_model, save_model

    sd, _ = dinov2_backbone("reg4")
    torch.save(sd, tmp_path / "dinov2.pth")
    save_model(tiny_paper_model(), tmp_path / "start.safetensors")
    common = dict(model=str(tmp_path / "start.safetensors"), pretrained_encoder=str(tmp_path / "dinov2.pth"), steps=2)
    with pytest.raises(ValueError, match="multiples of the encoder's patch, 14: got 32x48 \\(nearest: 28x42\\)"):
        train(small_config(scenes, tmp_path / "bad", **common), progress=False)
    assert not (tmp_path / "bad").exists()                                        # refused before any file
    assert train(small_config(scenes, tmp_path / "run", input_size=(28, 42), **common), progress=False)["step"] == 2
    trained = load_model(tmp_path / "run" / "model.safetensors")
    assert trained.encoder.config.position == "learned" and trained.input_size == (28, 42)
    assert not torch.equal(trained.encoder.pos_embed, sd["pos_embed"])           # it trained


def test_dinov2_files_that_do_not_fit_are_refused_with_the_reason(tmp_path):
    sd, _ = dinov2_backbone("plain")
    torch.save(sd, tmp_path / "dinov2.pth")
    with pytest.raises(CheckpointError, match="16 wide with 2 blocks, the model's encoder is 64 wide with 4"):
        load_pretrained_encoder(from_preset("tiny"), tmp_path / "dinov2.pth")
    swiglu = {**{k: v for k, v in sd.items() if ".mlp." not in k}, "blocks.0.mlp.w12.weight": torch.zeros(64, 16)}
    torch.save(swiglu, tmp_path / "giant.pth")
    with pytest.raises(CheckpointError, match="SwiGLU feed-forward backbone"):
        load_pretrained_encoder(tiny_paper_model(), tmp_path / "giant.pth")
    dinov3_plus = {k.replace("mlp.fc1", "mlp.w1"): v for k, v in from_preset("tiny").encoder.state_dict().items()}
    torch.save(dinov3_plus, tmp_path / "vits16plus.pth")
    with pytest.raises(CheckpointError, match="DINOv3 ViT-S\\+/H\\+/7B"):
        load_pretrained_encoder(from_preset("tiny"), tmp_path / "vits16plus.pth")
    torch.save({k: v for k, v in sd.items() if k != "blocks.1.attn.qkv.bias"}, tmp_path / "short.pth")
    with pytest.raises(CheckpointError, match="blocks.1.attn.qkv.bias"):
        load_pretrained_encoder(tiny_paper_model(), tmp_path / "short.pth")


def test_a_new_head_trains_on_another_models_frozen_encoder(scenes, tmp_path):
    """pretrained_encoder may be one of our model files (its encoder is taken), and lr_encoder 0
    freezes the encoder: after training it is that model's to the bit, while the head has moved."""
    from infinidepth.checkpoint import load_model, save_model

    donor = from_preset("grid-tiny", seed=5)
    save_model(donor, tmp_path / "donor.safetensors")
    cfg = small_config(scenes, tmp_path / "frozen", steps=3, pretrained_encoder=str(tmp_path / "donor.safetensors"),
                       lr_encoder=0.0)
    result = train(cfg, progress=False)
    assert result["step"] == 3
    trained = load_model(tmp_path / "frozen" / "model.safetensors")
    assert trained.arch == "InfiniDepthPaper"
    assert all(torch.equal(a, b) for a, b in zip(trained.encoder.state_dict().values(), donor.encoder.state_dict().values()))
    start = from_preset("tiny", seed=cfg.seed)
    assert not torch.equal(trained.decoder.mlp[0].weight, start.decoder.mlp[0].weight)
    optimizer = torch.load(tmp_path / "frozen" / "checkpoint.pt", weights_only=False)["optimizer"]
    assert [len(g["params"]) for g in optimizer["param_groups"]][0] == 0       # nothing of the encoder is optimised
    # Trained with the encoder learning too, the encoder moves: the check above can fail.
    moving = train(small_config(scenes, tmp_path / "moving", steps=3, pretrained_encoder=str(tmp_path / "donor.safetensors")),
                   progress=False)
    assert moving["step"] == 3
    moved = load_model(tmp_path / "moving" / "model.safetensors")
    assert not all(torch.equal(a, b) for a, b in zip(moved.encoder.state_dict().values(), donor.encoder.state_dict().values()))


def test_train_command_errors_are_one_line(scenes, tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: demo\nlearning_rate: 3\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "unknown config keys: learning_rate" in capsys.readouterr().err
    bad.write_text("base: demo\nsteps: two\ndata: hello\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "data must be a list of sources" in capsys.readouterr().err
    bad.write_text("base: demo\nsteps: two\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "steps must be a whole number, got 'two'" in capsys.readouterr().err
    # a reader whose module is not installed: its message, not a traceback
    from infinidepth.data import datasets

    def load(self, record):
        import no_such_depth_reader  # noqa: F401

    monkeypatch.setattr(datasets.ProceduralFiles, "load", load)
    cfg = small_config(scenes, tmp_path / "run").to_dict()
    bad.write_text(json.dumps(cfg))                                              # JSON is YAML
    assert main(["train", "--config", str(bad), "--quiet"]) == 2
    assert "reading ProceduralFiles needs a module that is not installed (No module named 'no_such_depth_reader')" \
        in capsys.readouterr().err


def test_seed_summary_of_the_demo_model_comparison(tmp_path):
    """benchmarks/demo_model_seeds.py: per-metric differences over seeds, counted the right way round
    (lower AbsRel, higher delta), and refusing reports of different experiments or the same seed."""

    def report(seed, implicit, grid, steps=6000):
        summary = lambda v: {"full": {"abs_rel": v[0], "delta_1.25": v[1]}, "hf": {"abs_rel": v[2], "delta_1.25": v[3]}}  # noqa: E731
        return {"seed": seed, "steps": steps, "pairs": 1024, "encoder": "192,6,3", "patch": 8,
                "models": {"tiny-x": {"summary": summary(implicit)}, "grid-tiny-x": {"summary": summary(grid)}}}

    paths = []
    for seed, implicit, grid in [(0, (0.20, 0.75, 0.48, 0.44), (0.22, 0.70, 0.47, 0.40)),
                                 (1, (0.21, 0.72, 0.50, 0.43), (0.23, 0.73, 0.49, 0.41))]:
        paths.append(tmp_path / f"s{seed}.json")
        paths[-1].write_text(json.dumps(report(seed, implicit, grid)))
    script = Path(__file__).parents[1] / "benchmarks" / "demo_model_seeds.py"
    out = tmp_path / "summary.json"
    run = subprocess.run([sys.executable, str(script), *map(str, paths), "--json", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    rows = {(r["region"], r["metric"]): r for r in json.loads(out.read_text())["rows"]}
    assert rows["full", "abs_rel"]["seeds_implicit_ahead"] == 2  # lower is better: -0.02, -0.02
    assert rows["full", "delta_1.25"]["seeds_implicit_ahead"] == 1  # +0.05, -0.01
    assert rows["hf", "abs_rel"]["seeds_implicit_ahead"] == 0  # +0.01, +0.01
    assert rows["hf", "delta_1.25"]["mean_difference"] == pytest.approx(0.03)
    paths[1].write_text(json.dumps(report(1, (0, 0, 0, 0), (0, 0, 0, 0), steps=100)))
    run = subprocess.run([sys.executable, str(script), *map(str, paths)], capture_output=True, text=True)
    assert run.returncode != 0 and "not the same experiment" in run.stderr
    run = subprocess.run([sys.executable, str(script), str(paths[0]), str(paths[0])], capture_output=True, text=True)
    assert run.returncode != 0 and "another seed" in run.stderr
    # heads on frozen encoders: one seed, two encoders is two runs; mixed with end-to-end runs, refused
    frozen = []
    for k, encoder in enumerate(("a.safetensors", "b.safetensors")):
        frozen.append(tmp_path / f"frozen{k}.json")
        frozen[-1].write_text(json.dumps(dict(report(2, (0.20, 0.75, 0.48, 0.44), (0.22, 0.70, 0.47, 0.40)), encoder_from=encoder)))
    run = subprocess.run([sys.executable, str(script), *map(str, frozen), "--json", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert json.loads(out.read_text())["encoders_from"] == ["a.safetensors", "b.safetensors"]
    run = subprocess.run([sys.executable, str(script), str(frozen[0]), str(frozen[0])], capture_output=True, text=True)
    assert run.returncode != 0 and "another encoder" in run.stderr
    run = subprocess.run([sys.executable, str(script), str(frozen[0]), str(paths[0])], capture_output=True, text=True)
    assert run.returncode != 0 and "mix" in run.stderr


def test_demo_model_script_runs_end_to_end_at_another_input(tmp_path):
    """benchmarks/demo_model.py on a few small scenes: both models train, are evaluated at four times
    the chosen input and compared, and the report and picture say at which sizes; a bad --input is
    refused before anything is rendered."""
    script = Path(__file__).parents[1] / "benchmarks" / "demo_model.py"
    out = tmp_path / "report.json"
    common = [sys.executable, str(script), "--work", str(tmp_path / "work"), "--train-scenes", "8", "--val-scenes", "2",
              "--steps", "2", "--pairs", "64"]
    run = subprocess.run([*common, "--input", "32x48", "--json", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["input"] == [32, 48] and report["evaluated_at"] == [128, 192]
    assert sorted(report["models"]) == ["grid-tiny", "tiny"] and report["implicit_minus_grid"]["full/abs_rel"]["images"] == 2
    # the implicit model is also scored on its own input grid, upsampled; the perfect grid beats both untrained models
    assert set(report["models"]["tiny"]["summary_input_grid"]) == {"full", "hf"}
    ceiling = report["grid_ceiling"]["full"]["abs_rel"]
    assert 0 <= ceiling < min(report["models"][m]["summary"]["full"]["abs_rel"] for m in ("tiny", "grid-tiny"))
    from PIL import Image

    # columns: input, truth, two models; rows: the picture's scenes that exist (0, 7 and 12: only 0 here)
    assert Image.open(out.with_suffix(".png")).size == (4 * 192, 20 + 128)
    index = json.loads((tmp_path / "work" / "val" / "index.json").read_text())
    assert index["size"] == [128, 192]
    run = subprocess.run([*common, "--work", str(tmp_path / "other"), "--input", "30x48"], capture_output=True, text=True)
    assert run.returncode == 2 and "multiples of 16" in run.stderr and not (tmp_path / "other").exists()
    run = subprocess.run([*common, "--work", str(tmp_path / "other"), "--encoder-from", str(tmp_path / "none.safetensors")],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "no model file" in run.stderr and not (tmp_path / "other").exists()


def test_training_checkpoints_with_their_heads_load_the_backbone(tmp_path):
    """DINOv2's and DINOv3's teacher_checkpoint.pth hold the whole teacher: {"teacher": {"backbone.*",
    "dino_head.*", "ibot_head.*"}}. The heads kept the backbone's prefix from being stripped, and
    nothing of the backbone loaded."""
    donor = from_preset("tiny", seed=3)
    sd = {f"backbone.{k}": v for k, v in donor.encoder.state_dict().items()}
    sd["dino_head.mlp.0.weight"] = torch.zeros(8, 64)
    sd["ibot_head.last_layer.weight"] = torch.zeros(8, 64)
    torch.save({"teacher": sd}, tmp_path / "teacher_checkpoint.pth")
    model = from_preset("tiny", seed=4)
    load_pretrained_encoder(model, tmp_path / "teacher_checkpoint.pth")
    assert all(torch.equal(a, b) for a, b in zip(model.encoder.state_dict().values(), donor.encoder.state_dict().values()))
    dinov2, _ = dinov2_backbone("reg4")  # the DINOv2 layout, recognised behind the heads too
    torch.save({"teacher": {**{f"backbone.{k}": v for k, v in dinov2.items()}, "dino_head.mlp.0.bias": torch.zeros(8)}},
               tmp_path / "dinov2_teacher.pth")
    paper = tiny_paper_model()
    load_pretrained_encoder(paper, tmp_path / "dinov2_teacher.pth")
    assert paper.encoder.config.position == "learned" and torch.equal(paper.encoder.pos_embed, dinov2["pos_embed"])


def test_dinov3_files_that_do_not_fit_name_the_difference(tmp_path):
    """A DINOv3-layout file of another width, depth, patch or storage-token count is named in
    words before the key-by-key list (which stays)."""
    torch.save(from_preset("paper-small").encoder.state_dict(), tmp_path / "small.pth")
    with pytest.raises(CheckpointError, match=r"384 wide with 12 blocks, patch 16, 4 storage tokens, 6 heads; the model's "
                                              r"encoder is 64 wide with 4 blocks(.|\n)*shape mismatches"):
        load_pretrained_encoder(from_preset("tiny"), tmp_path / "small.pth")
    sd = from_preset("tiny").encoder.state_dict()
    sd["storage_tokens"] = torch.zeros(1, 2, 64)
    sd["patch_embed.proj.weight"] = torch.zeros(64, 3, 14, 14)
    torch.save(sd, tmp_path / "p14.pth")
    with pytest.raises(CheckpointError, match="patch 14, 2 storage tokens.*needs patch_size=14 and n_storage_tokens=2"):
        load_pretrained_encoder(from_preset("tiny"), tmp_path / "p14.pth")


class _HungRead(torch.utils.data.Dataset):
    def __len__(self):
        return 100

    def __getitem__(self, i):
        if i >= 2:
            time.sleep(60)   # a read that hangs (a stalled network file)
        return i


def test_workers_that_ignore_sigterm_are_still_stopped():
    """The workers ignore SIGTERM (a group signal must not kill them), and torch's shutdown ends with
    a SIGTERM: a worker stuck in a read survived it, and Python's exit waited on it."""
    from infinidepth.train.trainer import _leave_stop_signals_to_the_trainer, _stop_workers

    loader = torch.utils.data.DataLoader(_HungRead(), batch_size=1, num_workers=1,
                                         worker_init_fn=_leave_stop_signals_to_the_trainer)
    batches = iter(loader)
    assert [int(next(batches)), int(next(batches))] == [0, 1]
    _stop_workers(batches)
    assert not any(w.is_alive() for w in batches._workers)
