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
import tarfile
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


# python3 as benchmarks/gpu.sh calls it: "-" alone (its preflight, a script on stdin) answers $STUB_HAS and
# $STUB_CUDA; a command naming $FAIL_ON fails (exit status $FAIL_RC, 1 unless set); "--json PATH" writes {} there (--junitxml, a report of one
# test); every call prints its arguments. "- ARGS" (the summary at the end) runs the real python.
GPU_SCRIPT_PYTHON = r"""#!/bin/sh
if [ "$1" = - ] && [ $# -gt 1 ]; then exec "$REAL_PYTHON" "$@"; fi
if [ "$1" = - ]; then cat >/dev/null; echo "${STUB_HAS-torch triton pytest}"; echo "${STUB_CUDA-cuda_ok}"; exit 0; fi
echo "stub $*"
case "$*" in *"available_backends as a"*) echo "${STUB_BACKENDS-[torch, cpp]}"
    case "${STUB_BACKENDS-}" in *cuda*) echo with-cuda-kernels ;; esac; exit 0 ;; esac
case "$*" in *"assert 'cuda' in available_backends"*) case "${STUB_BACKENDS-}" in *cuda*) exit 0 ;; esac; exit 1 ;; esac
case "$*" in *"${FAIL_ON:-@none@}"*) exit "${FAIL_RC:-1}" ;; esac
while [ $# -gt 0 ]; do
    [ "$1" = --json ] && echo '{}' > "$2"
    [ "$1" = --junitxml ] && echo '<testsuites><testsuite><testcase name="t" time="1"/></testsuite></testsuites>' > "$2"
    shift
done
exit 0
"""


def gpu_script(tmp_path, *stages, **env):
    """benchmarks/gpu.sh STAGES... run from tmp_path with the stub above as its python, TAG t."""
    stub = tmp_path / "py"
    stub.write_text(GPU_SCRIPT_PYTHON)
    stub.chmod(0o755)
    full = {k: v for k, v in os.environ.items() if k not in ("OUT", "RESULTS", "GPU_BUDGET_S", "FAIL_ON")}
    full.update(PY=str(stub), TAG="t", REAL_PYTHON=sys.executable, WHEEL_DIR=str(tmp_path / "no_wheels"))
    full.update(env)   # (WHEEL_DIR: not the checkout's .whl/, which a GPU session downloads)
    return subprocess.run(["bash", str(BENCHMARKS / "gpu.sh"), *stages], cwd=tmp_path, env=full,
                          capture_output=True, text=True)


needs_bash = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and timeout")


@needs_bash
def test_gpu_script_takes_a_relative_results_folder_from_anywhere(tmp_path):
    """A relative RESULTS stays where the caller meant it; an unknown stage stops the script before
    anything runs."""
    assert subprocess.run(["bash", "-n", str(BENCHMARKS / "gpu.sh")]).returncode == 0
    done = gpu_script(tmp_path, "kernels", RESULTS="res")
    assert done.returncode == 0, done.stderr
    assert "No such file" not in done.stdout + done.stderr
    log = (tmp_path / "res" / "gpu_log_t.txt").read_text()
    assert f"--json {tmp_path / 'res'}/decoder_official_8k_t.json" in log and "gather.py" in log
    bad = gpu_script(tmp_path, "kernels", "nope", RESULTS="res")
    assert bad.returncode == 2 and "unknown stage 'nope'" in bad.stderr and "stub" not in bad.stdout
    bad = gpu_script(tmp_path, "kernels", RESULTS="res", GPU_BUDGET_S="5m")
    assert bad.returncode == 2 and "GPU_BUDGET_S must be whole seconds, got '5m'" in bad.stderr
    assert "stub" not in bad.stdout


@needs_bash
@pytest.mark.parametrize("rc, reruns", [(0, False), (1, False), (124, True), (137, True)])
def test_gpu_script_test_stage_reruns_cuda_tests_the_cuda_stage_did_not_finish(tmp_path, rc, reruns):
    """The test stage leaves out the CUDA tests only when the cuda stage's pytest ran to its end
    (passed or some failed); cut off by its time cap or killed, they run again."""
    done = gpu_script(tmp_path, "cuda", "test", RESULTS="res", STUB_BACKENDS="[torch, cpp, cuda]",
                      FAIL_ON="pytest_cuda_t.xml", FAIL_RC=str(rc))
    assert done.returncode == 0, done.stderr
    test_stage = [line for line in done.stdout.splitlines() if line.startswith("stub") and "pytest_test_t.xml" in line]
    assert len(test_stage) == 1
    assert ("-k not gsplat" in test_stage[0]) == reruns
    assert ("-k triton and not gsplat" in test_stage[0]) == (not reruns)


@needs_bash
def test_gpu_script_brings_back_this_runs_json_in_one_file_whatever_fails(tmp_path):
    """The device tool brings back at most 8 files from $OUT: the script leaves two there, its log and
    one tar of the JSON this run wrote (not older files of the folder), remade after every command, so
    a failed command (or a call cut off later) keeps what came before, and the next commands still run."""
    out, res = tmp_path / "out", tmp_path / "res"
    res.mkdir()
    (res / "old_t.json").write_text("{}")
    os.utime(res / "old_t.json", (1e9, 1e9))
    done = gpu_script(tmp_path, "kernels", OUT=str(out), RESULTS="res", FAIL_ON="gather.py")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["gpu_log_t.txt", "gpu_results_t.tar"]
    with tarfile.open(out / "gpu_results_t.tar") as tar:
        names = sorted(os.path.basename(n) for n in tar.getnames())
    assert names == ["decoder_official_8k_t.json", "decoder_official_grad_t.json", "decoder_paper_t.json",
                     "sampler_t.json"]   # sampler.py ran after gather.py failed
    log = (out / "gpu_log_t.txt").read_text()
    assert "FAILED (rc=1)" in log and "gather.py" in log.split("FAILED (rc=1)")[1].splitlines()[0]


@needs_bash
def test_gpu_script_checks_what_the_stages_need_before_running_any(tmp_path):
    """Without a torch that sees a GPU, or without triton for a stage that compiles it, the script
    stops at once with a MISSING line (a lease is too short to find out stage by stage); a missing
    gsplat drops only the stages that need it."""
    for env in ({"STUB_CUDA": "cuda_no"}, {"STUB_HAS": "torch pytest"}):
        done = gpu_script(tmp_path, "cuda", "test", RESULTS="res", **env)
        assert done.returncode == 3 and "MISSING" in done.stdout, done.stdout
        assert "stub -m" not in done.stdout and "stub benchmarks" not in done.stdout   # nothing ran
    done = gpu_script(tmp_path, "gsplat", "gs", "kernels", RESULTS="res")
    assert done.returncode == 0, done.stderr
    assert "SKIPPED stage gs: gsplat is not installed" in done.stdout and "gs_agreement" not in done.stdout
    assert "stub benchmarks/decoder.py" in done.stdout


@needs_bash
def test_gpu_script_drops_the_cuda_stages_when_the_build_has_no_cuda_kernels(tmp_path):
    """setup.py builds the CPU kernels alone, silently, when it finds no CUDA toolkit: the build stage
    says so, and the stages that need the CUDA kernels do not run for nothing. An extension that has
    them already is not built again."""
    tools = dict(RESULTS="res", STUB_HAS="torch triton pytest setuptools ninja", CUDA_HOME=str(tmp_path / "cuda"))
    nvcc = tmp_path / "cuda" / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, stub'\n")
    nvcc.chmod(0o755)
    done = gpu_script(tmp_path, "build", "cuda", "test", **tools)
    assert done.returncode == 0, done.stderr
    assert "pip install" in done.stdout and "FAILED: the extension has no CUDA kernels" in done.stdout
    assert "SKIPPED stage cuda" in done.stdout and "decoder.py" not in done.stdout
    assert "-k not gsplat" in done.stdout   # the test stage runs, all of it (triton's tests)
    done = gpu_script(tmp_path, "build", "cuda", STUB_BACKENDS="[torch, cuda]", **tools)
    assert "pip install" not in done.stdout and "with-cuda-kernels" in done.stdout and "decoder.py" in done.stdout


@needs_bash
def test_gpu_script_stays_inside_its_time_budget(tmp_path):
    done = gpu_script(tmp_path, "kernels", RESULTS="res", GPU_BUDGET_S="0")
    assert done.returncode == 0, done.stderr
    assert "SKIPPED (" in done.stdout and "stub benchmarks" not in done.stdout


@needs_bash
def test_gpu_script_cuda_stage_times_every_block_size_in_one_process(tmp_path):
    """The cuda stage times the 64-, 32- and 16-row blocks in one decoder.py run (one baseline) and runs
    the GPU test outside tests/test_gpu.py; a test stage after it runs only the Triton tests (the cuda
    stage ran the others)."""
    out = tmp_path / "out"
    done = gpu_script(tmp_path, "cuda", "test", RESULTS="res", OUT=str(out), STUB_HAS="torch triton pytest xdist")
    assert done.returncode == 0, done.stderr
    with tarfile.open(out / "gpu_results_t.tar") as tar:   # pytest's reports travel with the JSON
        assert {"pytest_cuda_t.xml", "pytest_test_t.xml"} <= {os.path.basename(n) for n in tar.getnames()}
    assert "pytest_test_t.xml: 1 tests, 0 failed" in done.stdout   # the summary at the end
    official = [line for line in done.stdout.splitlines() if "decoder.py" in line and "official" in line]
    assert len(official) == 1 and "--cuda-rows 32,16" in official[0]
    tests = [line for line in done.stdout.splitlines() if line.startswith("stub -m pytest")]
    assert "-k cuda and not triton and not gsplat" in tests[0]
    assert "tests/test_export.py::test_exported_predict_on_a_gpu_holds_the_cuda_kernel" in tests[0]   # a GPU test too
    assert "-n 8" in tests[1] and tests[1].endswith("-k triton and not gsplat")


def test_decoder_script_times_capped_cuda_blocks_with_the_cap_set(scripts, monkeypatch):
    """--cuda-rows: each capped row decodes with INFINIDEPTH_CUDA_MAX_ROWS set to its cap (the extension
    reads it at every launch), the plain cuda rows and everything else without it. The cuda backend is
    faked by the torch one here, recording the variable at each call."""
    import decoder

    seen = []

    def fake_decode(maps, coords, dec, backend="torch", **kw):
        if backend == "cuda":
            seen.append((kw.get("precision"), os.environ.get("INFINIDEPTH_CUDA_MAX_ROWS")))
        kw.pop("precision", None)
        return implicit_decode(maps, coords, dec, backend="torch", **kw)

    from infinidepth.ops import implicit_decode

    monkeypatch.delenv("INFINIDEPTH_CUDA_MAX_ROWS", raising=False)
    monkeypatch.setattr(decoder, "implicit_decode", fake_decode)
    monkeypatch.setattr(decoder, "available_backends", lambda device: ["torch", "cuda"])
    monkeypatch.setattr(decoder, "timeit", lambda fn, device: (fn(), 1.0)[1])
    with contextlib.redirect_stdout(io.StringIO()):
        report = decoder.main(["--queries", "32", "--backends", "torch,cuda", "--cuda-rows", "32,16"])
    rows = {(r["backend"], r["dtype"]): r for r in report["results"]}
    for cap in (32, 16):
        assert rows[(f"cuda, at most {cap} rows per block", "fp32")]["cuda_max_rows"] == cap
        assert (f"cuda, at most {cap} rows per block", "bf16") in rows
    assert {env for p, env in seen} == {None, "32", "16"}
    assert {env for p, env in seen if env} == {"32", "16"} and ("bf16", "16") in seen and ("fp32", "32") in seen
    assert "INFINIDEPTH_CUDA_MAX_ROWS" not in os.environ   # restored
    with pytest.raises(SystemExit):   # without the cuda backend there is nothing to cap
        monkeypatch.setattr(decoder, "available_backends", lambda device: ["torch"])
        with contextlib.redirect_stderr(io.StringIO()):
            decoder.main(["--queries", "32", "--cuda-rows", "32"])


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


def test_uniformity_script_stops_on_any_other_sampler_error(scripts, monkeypatch):
    """Only the released rule's "every triangle was pruned" becomes an n/a row: another ValueError
    (bad intrinsics, a bug) stops the script instead of hiding in the table."""
    import uniformity
    from infinidepth.sampling.scenes import standard_scenes

    def broken(*args, **kwargs):
        raise ValueError("focal lengths must be positive")

    monkeypatch.setattr(uniformity, "surface_area_sample", broken)
    with pytest.raises(ValueError, match="focal lengths must be positive"):
        uniformity.evaluate(standard_scenes((24, 32))[0], baseline=0.2, k=8, seed=0)


def test_splat_render_script_records_a_command_a_shell_can_rerun(scripts, tmp_path, monkeypatch):
    """Its report's command line is quoted as a shell takes it (a path with a space stays one
    argument), as every other script's is, not the arguments joined by spaces."""
    import shlex

    import splat_render
    from infinidepth.gs import Gaussians

    g = torch.Generator().manual_seed(0)
    n = 50
    fake = Gaussians(torch.randn(n, 3, generator=g) * 0.3 + torch.tensor([0, 0, 3.0]), torch.rand(n, 3, generator=g) * 0.05 + 0.01,
                     torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
                     torch.rand(n, generator=g) * 0.9 + 0.05, torch.randn(n, 3, 4, generator=g) * 0.5)
    monkeypatch.setattr(splat_render, "make_scene", lambda points, device: (fake, (16, 16), 3.0))
    out = tmp_path / "a b.json"
    argv = ["benchmarks/splat_render.py", "--points", str(n), "--sizes", "8x8", "--min-time", "0", "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    with contextlib.redirect_stdout(io.StringIO()):
        splat_render.main()
    saved = json.loads(out.read_text())
    assert shlex.split(saved["command"]) == argv
    assert saved["torch"] == torch.__version__ and saved["device"]


@pytest.mark.parametrize("name, args, message", [
    ("decoder", ["--queries", "0"], "argument --queries: must be positive, got 0"),
    ("decoder", ["--queries", "64", "--backends", "torch,bogus"], "--backends: bogus not available on cpu"),
    ("gather", ["--map", "48"], "argument --map: the size must look like HxW"),
    ("gather", ["--channels", "4", "--map", "4x4", "--queries", "0"], "argument --queries: must be positive, got 0"),
    ("sampler", ["--size", "768"], "argument --size: the size must look like HxW"),
    ("sampler", ["--size", "24x32", "--points", "0"], "argument --points: must be positive, got 0"),
    ("uniformity", ["--size", "240x"], "argument --size: the size must look like HxW"),
    ("render", ["--sizes", "64x48,64"], "argument --sizes: the size must look like WIDTHxHEIGHT"),
    ("render", ["--scenes", "0"], "argument --scenes: must be positive, got 0"),
    ("gs_views", ["--size", "0x128"], "argument --size: the size must be positive"),
    ("gs_views", ["--scenes", "0", "--size", "16x16"], "argument --scenes: must be positive, got 0"),
    ("splat_render", ["--sizes", "0x0"], "argument --sizes: the size must be positive"),
    ("gs_agreement", ["--size", "240"], "argument --size: the size must look like HxW"),
    ("outliers", ["--sizes", "4k,2160x3840"], "argument --sizes: '2160x3840' is 2160x3840, given already as '4k'"),
    ("outliers", ["--sizes", "8"], "argument --sizes: --sizes must look like HxW"),
])
def test_script_refuses_bad_sizes_and_counts_with_a_usage_error(scripts, monkeypatch, capsys, name, args, message):
    """A size that is not HxW (WIDTHxHEIGHT for render.py), or a count of 0, stops the script at once
    with argparse's one-line error, not a traceback from deep inside (after minutes of a baseline, for
    an unknown --backends) or a report of NaN scores (gs_views.py --scenes 0)."""
    import inspect

    module = __import__(name)
    if name == "splat_render":   # what comes after the arguments is not needed here
        monkeypatch.setattr(module, "make_scene", lambda *a: pytest.fail("the bad --sizes was taken"))
    monkeypatch.setattr(sys, "argv", [f"benchmarks/{name}.py", *args])
    with pytest.raises(SystemExit) as e, contextlib.redirect_stdout(io.StringIO()):
        module.main(args) if inspect.signature(module.main).parameters else module.main()
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_outliers_script_reports_the_kernel_agreeing_with_ckdtree_and_brute_force(scripts, tmp_path, capsys):
    """On the demo picture's per-pixel clouds at small sizes: the report says the kernel's scores are
    cKDTree's, the masks are the same, and random points' scores match all their distances."""
    import outliers

    out = tmp_path / "o.json"
    outliers.main(["--sizes", "24x32,40x56", "--repeats", "1", "--brute", "5", "--threads", "1", "--json", str(out)])
    report = json.loads(out.read_text())
    assert [(r["size"], r["points"]) for r in report["rows"]] == [("24x32", 768), ("40x56", 2240)]
    for row in report["rows"]:
        assert row["max_rel_score_diff_vs_ckdtree"] < 1e-12 and row["max_rel_err_vs_brute_force"] < 1e-12
        assert row["mask_differences"] == 0 and row["speedup"] > 0 and len(row["kernel_runs_s"]) == 1
    assert report["device"] and report["neighbours"] == 30
