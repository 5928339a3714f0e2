"""The commands other than predict on awkward inputs: a --json report named like one of the run's inputs,
a run folder holding a finished model whose checkpoint was deleted, learning rates that train nothing,
and a checkpoint path taken by a folder."""

import json

import pytest

from infinidepth.data.procedural import render_set
from test_cli import run


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("set") / "procedural"
    render_set(root, scenes=2, size=(32, 48), progress=False)
    return root


def refused(argv, capsys, *words, lines=1):
    """Exit 2 and infinidepth's error naming ``words``, in ``lines`` lines (a bad config: a line per field)."""
    code, _, err = run(argv, capsys)
    said = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(said) == lines and said[0].startswith("infinidepth: error:"), (argv, err)
    for w in words:
        assert w in err, (argv, w, err)


def train_yaml(path, scenes, out, **fields):
    cfg = dict(model="tiny", data=[{"name": "procedural", "root": str(scenes)}], input_size=[32, 48], pairs=32,
               batch_size=1, steps=1, warmup_steps=0, num_workers=0, out=str(out), **fields)
    path.write_text(json.dumps(cfg))   # JSON is YAML
    return str(path)


def test_a_report_never_replaces_the_checkpoint_the_run_reads(tmp_path, scenes, capsys, monkeypatch):
    from infinidepth.checkpoint import save_model
    from infinidepth.models import from_preset

    ckpt = tmp_path / "model.safetensors"
    save_model(from_preset("tiny"), ckpt)
    weights = ckpt.read_bytes()
    monkeypatch.chdir(tmp_path)
    for argv in (["bench", "--checkpoint", str(ckpt), "--sizes", "8x8", "--paths", "torch"],
                 ["bench", "--preset", str(ckpt), "--sizes", "8x8", "--paths", "torch"],
                 ["eval", "--dataset", "procedural", "--root", str(scenes), "--checkpoint", str(ckpt)]):
        refused(argv + ["--json", "model.safetensors"], capsys, "is the checkpoint this run reads")   # named otherwise
        assert ckpt.read_bytes() == weights


def test_an_eval_report_never_replaces_a_file_of_a_dataset(tmp_path, scenes, capsys):
    import shutil

    scenes = shutil.copytree(scenes, tmp_path / "set")    # (a run that overwrites it spoils only this copy)
    for name in ("index.json", "scene_000000/view_00_rgb.png"):
        before = (scenes / name).read_bytes()
        refused(["eval", "--dataset", "procedural", "--root", str(scenes), "--checkpoint", "tiny",
                 "--json", str(scenes / name)], capsys, "is a file in the dataset root", "outside it")
        assert (scenes / name).read_bytes() == before
    # a new file in the root, or an earlier report of eval there, may be (re)written
    from infinidepth.cli import check_report_spares_inputs

    check_report_spares_inputs(str(scenes / "new.json"), None, [str(scenes)])
    earlier = tmp_path / "root" / "scores.json"
    earlier.parent.mkdir()
    earlier.write_text(json.dumps({"checkpoint": "tiny", "results": []}))
    check_report_spares_inputs(str(earlier), None, [str(earlier.parent)])


def test_train_keeps_a_finished_runs_model_when_its_checkpoint_is_gone(tmp_path, scenes, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"the finished run's model")
    refused(["train", "--config", train_yaml(tmp_path / "c.yaml", scenes, out), "--quiet"], capsys,
            f"{out / 'model.safetensors'} exists")
    assert (out / "model.safetensors").read_bytes() == b"the finished run's model"


def test_train_gs_keeps_a_finished_runs_head_when_its_checkpoint_is_gone(tmp_path, capsys):
    (tmp_path / "gs_head.pt").write_bytes(b"the finished run's head")
    refused(["train-gs", "--depth-model", "tiny", "--scenes", "1", "--steps", "1", "--points", "64", "--size", "32x48",
             "--views", "2", "--out", str(tmp_path), "--quiet"], capsys, f"{tmp_path / 'gs_head.pt'} exists")
    assert (tmp_path / "gs_head.pt").read_bytes() == b"the finished run's head"


def test_learning_rates_that_train_nothing_are_refused(tmp_path, scenes, capsys):
    refused(["train", "--config", train_yaml(tmp_path / "c.yaml", scenes, tmp_path / "run", lr_encoder=0, lr_decoder=0.0)],
            capsys, "bad training config", "lr_encoder and lr_decoder are both 0", lines=2)
    assert not (tmp_path / "run").exists()
    from infinidepth.train import load_config

    assert load_config(train_yaml(tmp_path / "d.yaml", scenes, tmp_path / "run", lr_encoder=0)).lr_decoder > 0  # frozen encoder


def test_resume_names_a_folder_in_the_checkpoints_place(tmp_path, scenes, capsys):
    (tmp_path / "run" / "checkpoint.pt").mkdir(parents=True)
    refused(["train", "--config", train_yaml(tmp_path / "c.yaml", scenes, tmp_path / "run"), "--resume"], capsys,
            "checkpoint.pt is a folder, not a checkpoint file")
    (tmp_path / "gs" / "gs_checkpoint.pt").mkdir(parents=True)
    refused(["train-gs", "--depth-model", "tiny", "--out", str(tmp_path / "gs"), "--resume", "--quiet"], capsys,
            "gs_checkpoint.pt is a folder, not a checkpoint file")


def test_an_lpips_weight_without_lpips_is_refused_not_ignored(tmp_path, capsys):
    # it used to train on L1 + SSIM alone, as if the weight had not been given
    refused(["train-gs", "--lpips-weight", "0.2", "--steps", "1", "--out", str(tmp_path / "never")], capsys,
            "--lpips-weight", "--lpips")
    assert not (tmp_path / "never").exists()
