"""`infinidepth bench` (infinidepth/bench.py) and the scripts in benchmarks/: what they time, what
their reports record, their command lines and benchmarks/gpu.sh. No timing thresholds: only which
calls are made, on what, and what is written."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infinidepth import bench
from infinidepth.models import from_preset

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


@pytest.fixture(scope="module")
def scripts():
    """The benchmark scripts importable by name, as they import each other (``from common import``)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield
    finally:
        sys.path.remove(str(BENCHMARKS))


def spy_decode(model, log: list):
    """Record (backend, queries, chunk) of every ``model.decode`` call."""
    decode = model.decode

    def spy(feats, coords, backend=None, chunk=65536, with_grad=False):
        log.append((backend, coords.shape[1], chunk))
        return decode(feats, coords, backend=backend, chunk=chunk, with_grad=with_grad)

    model.decode = spy


def test_released_style_baseline_decodes_chunks_of_ten_thousand_queries():
    """The baseline is the released decoder's loop: chunks of exactly 10,000 queries spanning output
    rows, not one chunk per row (at 8K a row is 7,680 queries, at 16K 15,360), and the same map as
    our reference."""
    model = from_preset("tiny")
    image = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    feats = model.encode(image)
    log: list = []
    spy_decode(model, log)
    size = (4, 6000)
    out = torch.zeros(1, 1, *size)
    bench.decode_path(model, feats, size, bench.BASELINE, out)
    assert {(b, c) for b, _, c in log} == {("torch", bench.BASELINE_CHUNK)}
    assert sum(n for _, n, _ in log) == 4 * 6000 and max(n for _, n, _ in log) > 6000
    want = model.decode_grid(feats, size, backend="torch")
    torch.testing.assert_close(out, want)


def test_warm_up_meets_every_tile_the_timed_runs_decode(monkeypatch):
    """Triton autotunes once per query-count bucket on a GPU: every (path, tile) a timed run decodes
    was decoded in the warm-up before it, the last, shorter tile of a size included."""
    monkeypatch.setattr(bench, "default_tile", lambda device: 200)
    model = from_preset("tiny")
    image = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    sizes = [("a", (10, 50)), ("b", (3, 70))]
    warm: list = []
    spy_decode(model, warm)
    bench.warm_up(model, image, sizes, ["torch", "cpp"])
    timed: list = []
    spy_decode(model, timed)
    for _, size in sizes:
        for p in ("torch", "cpp"):
            bench.run_one(model, image, size, p)
    assert {(b, n) for b, n, _ in timed} <= {(b, n) for b, n, _ in warm}
    assert {n for _, n, _ in timed} == {200, 100, 140, 70}   # 4 rows of 50, the 2 left; 2 rows of 70, the 1 left


def test_bench_report_records_the_command_line(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["infinidepth", "bench", "--sizes", "8x8", "--json", "a b.json"])
    report = bench.bench(from_preset("tiny"), [("s", (8, 8))], torch.device("cpu"), ["torch"], warmup=False,
                         progress=False, input_size=(32, 48))
    assert report["command"] == "infinidepth bench --sizes 8x8 --json 'a b.json'"
    assert report["torch"] == torch.__version__ and report["device"].startswith("cpu")


def test_timeit_is_the_median_of_single_calls_after_a_warm_up(scripts, monkeypatch):
    """One slow call (another process on a shared machine) does not move the figure; nor does the
    first call (compilation). A fake clock: each call advances it by the next duration."""
    import common

    now = [0.0]
    monkeypatch.setattr(common.time, "perf_counter", lambda: now[0])
    durations = iter([100.0, 1.0, 1.0, 50.0, 1.0, 1.0])

    def fn():
        now[0] += next(durations)

    assert common.timeit(fn, torch.device("cpu"), min_time=4.5, max_iters=5) == 1.0


def test_write_report_adds_the_torch_version_and_the_command(scripts, tmp_path):
    import common

    path = tmp_path / "r.json"
    common.write_report(str(path), {"device": "d", "rows": []}, ["benchmarks/gather.py", "--queries", "8"])
    report = json.loads(path.read_text())
    assert report["torch"] == torch.__version__ and report["command"] == "benchmarks/gather.py --queries 8"
    assert report["device"] == "d" and [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary left
    common.write_report(None, {"device": "d"})  # no path: nothing written
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


@pytest.mark.parametrize("name", ["decoder", "gather", "sampler", "uniformity", "gs_agreement"])
def test_script_help_says_the_whole_first_paragraph(scripts, name, capsys):
    """--help carries the docstring's first paragraph whole, not its first line cut mid-sentence."""
    module = __import__(name)
    with pytest.raises(SystemExit) as e:
        module.main(["--help"])
    assert e.value.code == 0
    first = "".join(module.__doc__.split("\n\n")[0].split())   # whitespace aside: argparse rewraps it
    assert first in "".join(capsys.readouterr().out.split())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
@pytest.mark.parametrize("name", ["decoder", "gather", "sampler"])
def test_script_on_a_machine_without_cuda_says_so(scripts, name):
    module = __import__(name)
    with pytest.raises(SystemExit, match="no CUDA GPU is visible to torch here; use --device cpu"):
        module.main(["--device", "cuda"])


def test_decoder_script_rows_every_backend_once(scripts, tmp_path, monkeypatch):
    """By default the plain-PyTorch reference has its own fp32 row beside the baseline; naming torch
    in --backends does not give it two bf16 rows. The report records its command line."""
    import decoder

    monkeypatch.setattr(decoder, "timeit", lambda fn, device: (fn(), 1.0)[1])
    out = tmp_path / "d.json"
    with contextlib.redirect_stdout(io.StringIO()):
        report = decoder.main(["--queries", "64", "--json", str(out)])
        rows = [(r["backend"], r["dtype"]) for r in report["results"]]
        assert ("torch", "fp32") in rows and len(rows) == len(set(rows))
        again = decoder.main(["--queries", "64", "--backends", "torch,cpp"] if "cpp" in dict(rows) else
                             ["--queries", "64", "--backends", "torch"])
    rows = [(r["backend"], r["dtype"]) for r in again["results"]]
    assert len(rows) == len(set(rows))
    saved = json.loads(out.read_text())
    assert saved["command"].endswith("decoder.py --queries 64 --json " + str(out))
    assert saved["torch"] == torch.__version__ and saved["device"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_script_takes_a_relative_results_folder_from_anywhere(tmp_path):
    """A relative RESULTS stays where the caller meant it while stages cd into benchmarks/; an unknown
    stage stops the script before anything runs. PY is a stub that prints its arguments."""
    script = BENCHMARKS / "gpu.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    stub = tmp_path / "py"
    stub.write_text('#!/bin/sh\necho "stub $*"\n')
    stub.chmod(0o755)
    env = {**os.environ, "RESULTS": "res", "PY": str(stub), "TAG": "t"}
    env.pop("OUT", None)
    done = subprocess.run(["bash", str(script), "kernels"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "No such file" not in done.stdout + done.stderr
    log = (tmp_path / "res" / "log.txt").read_text()
    assert f"--json {tmp_path / 'res'}/decoder_official_8k_t.json" in log and "gather.py" in log
    bad = subprocess.run(["bash", str(script), "kernels", "nope"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown stage 'nope'" in bad.stderr and "stub" not in bad.stdout


def test_bench_command_records_the_arguments_main_was_given(tmp_path, capsys):
    from infinidepth.cli import main

    out = tmp_path / "r.json"
    argv = ["bench", "--preset", "tiny", "--sizes", "8x8", "--paths", "torch", "--input-size", "32x48",
            "--quiet", "--json", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    assert json.loads(out.read_text())["command"] == "infinidepth " + " ".join(argv)   # not pytest's own argv


def test_uniformity_script_reports_a_sampler_with_no_points_as_na(scripts, tmp_path, capsys):
    """At 24x32 the released triangle rule prunes every triangle of the ground plane (neighbouring
    rows differ by more than its depth ratio); the script used to stop there with a ValueError."""
    import uniformity

    out = tmp_path / "u.json"
    uniformity.main(["--size", "24x32", "--json", str(out), "--plot", str(tmp_path / "u.png")])
    rows = json.loads(out.read_text())["rows"]
    failed = [r for r in rows if "error" in r]
    assert [(r["scene"], r["sampler"]) for r in failed] == [("ground to the horizon", "triangle (released)")]
    assert "every triangle was pruned" in failed[0]["error"] and "n/a: every triangle" in capsys.readouterr().out
    assert all(r["points"] > 0 for r in rows if "error" not in r) and (tmp_path / "u.png").stat().st_size > 0
