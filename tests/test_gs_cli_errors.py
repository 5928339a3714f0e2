"""Bad input to `infinidepth train-gs` and `infinidepth gs`: one clear line naming the problem, no traceback."""

import dataclasses

import pytest
import torch
from conftest import RunsCode

from infinidepth.gs.train import GSTrainConfig, train_gs


def small_cfg(out):
    return GSTrainConfig(depth_model="tiny", scenes=2, size=(32, 48), points=300, steps=4, out=str(out)).validate()


def refusal(cfg):
    with pytest.raises(ValueError) as e:
        train_gs(cfg, resume=True, progress=False)
    return str(e.value)


def test_gs_resume_names_a_damaged_or_foreign_checkpoint_once(tmp_path):
    cfg = small_cfg(tmp_path)
    ckpt = tmp_path / "gs_checkpoint.pt"
    ckpt.write_bytes(b"truncated")
    text = refusal(cfg)
    assert text.count(str(ckpt)) == 1 and "\n" not in text
    assert "not a PyTorch file" in text and "starts with b'trun'" in text
    torch.save({"model": {}, "trap": RunsCode(tmp_path / "code_ran")}, ckpt)   # names code to run
    text = refusal(cfg)
    assert text.count(str(ckpt)) == 1 and "mkdir, which is not rebuilt" in text and "weights_only" not in text
    assert not (tmp_path / "code_ran").exists()
    torch.save({"model": {}, "step": 3}, ckpt)          # a readable file, but not train-gs's
    assert refusal(cfg) == (f"--resume: {ckpt} is damaged or not a train-gs checkpoint "
                            "(it lacks head, optimizer, config, rng)")
    torch.save([1, 2], ckpt)
    assert refusal(cfg).endswith("(it lacks head, optimizer, step, config, rng)")
    torch.save({"config": dataclasses.asdict(cfg), "step": 0}, ckpt)    # the run's config, the rest missing
    assert refusal(cfg) == f"--resume: {ckpt} is damaged or not a train-gs checkpoint (it lacks head, optimizer, rng)"


def test_gs_resume_of_a_head_that_does_not_fit_the_depth_model_is_named(tmp_path):
    """The head's input width comes from the depth model's features: a checkpoint whose head was built
    for another model (the file at --depth-model replaced since) is refused in one line."""
    import random

    from infinidepth.gs.heads import PointHead

    cfg = small_cfg(tmp_path)
    head = PointHead(5, cfg.hidden)
    opt = torch.optim.AdamW(head.parameters())
    torch.save({"head": head.state_dict(), "optimizer": opt.state_dict(), "step": 2, "config": dataclasses.asdict(cfg),
                "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}}, tmp_path / "gs_checkpoint.pt")
    text = refusal(cfg)
    assert text.startswith(f"--resume: {tmp_path / 'gs_checkpoint.pt'} does not fit this run (was the depth model tiny "
                           "replaced since?): RuntimeError: Error(s) in loading state_dict for PointHead")
    assert "\n" not in text


def test_a_refused_resume_leaves_no_run_folder(tmp_path):
    with pytest.raises(ValueError, match="^--resume: no checkpoint at .*gs_checkpoint.pt"):
        train_gs(small_cfg(tmp_path / "run"), resume=True, progress=False)
    assert not (tmp_path / "run").exists()


def error_line(capsys, argv):
    """What `infinidepth ARGV` prints to stderr, checked to be one line of a refusal (exit status 2)."""
    from infinidepth.cli import main

    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_train_gs_refuses_an_out_that_is_a_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile", tmp_path / "afile" / "run"):
        line = error_line(capsys, ["train-gs", "--depth-model", "tiny", "--size", "16x16", "--steps", "1", "--quiet",
                                   "--out", str(out)])
        assert line == f"infinidepth: error: --out {out}: {tmp_path / 'afile'} is a file, not a folder"


def test_train_gs_and_gs_refuse_sizes_beyond_the_memory(tmp_path, capsys, monkeypatch):
    """--size 100000x100000 (train-gs) failed in the allocator with a traceback, a --render-size as
    large (gs) ate the machine's memory until killed; both are now refused before any work."""
    import numpy as np
    from PIL import Image

    import infinidepth.cli as cli

    monkeypatch.setattr(cli, "available_memory", lambda: 10**6)
    line = error_line(capsys, ["train-gs", "--depth-model", "tiny", "--size", "64x64", "--steps", "1", "--quiet",
                               "--out", str(tmp_path / "run")])
    assert line.startswith("infinidepth: error: --size 64x64: rendering a view needs about") and "free on cpu" in line
    assert not (tmp_path / "run").exists()
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(tmp_path / "im.png")
    line = error_line(capsys, ["gs", str(tmp_path / "im.png"), "--checkpoint", "tiny", "--points", "100", "--quiet",
                               "--render-size", "256x256", "--out", str(tmp_path / "gs")])
    assert line.startswith("infinidepth: error: --render-size 256x256: rendering a view needs about")
    assert not (tmp_path / "gs").exists()


def test_gs_training_config_bounds_scenes_and_views():
    """As infinidepth data render bounds them: --views 100000 ran a first step of 100000 rendered views
    (and stopped only after it, even on SIGTERM); --scenes 10**10 failed allocating the scenes'
    permutation (74 GiB) with a traceback."""
    with pytest.raises(ValueError, match=r"scenes must be in \[1, 1000000\], got 10000000000"):
        GSTrainConfig(scenes=10**10).validate()
    with pytest.raises(ValueError, match="views must be at most 1000, got 100000"):
        GSTrainConfig(views=100000).validate()
    assert GSTrainConfig(scenes=10**6, views=1000).validate().views == 1000
