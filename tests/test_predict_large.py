"""Dense prediction at any size in bounded memory: tiles, regions, preallocated and memory-mapped
outputs, the CLI's --region and streaming, and `infinidepth bench`."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from infinidepth import cli, save_model
from infinidepth.cli import main
from infinidepth.models import from_preset
from infinidepth.ops import available_backends
from infinidepth.ops.gather import cpu_supports_bf16


@pytest.fixture(scope="module")
def model():
    return from_preset("tiny")


@pytest.fixture(scope="module")
def image():
    return torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("backend", [b for b in available_backends(torch.device("cpu"))])
def test_tiled_equals_untiled_on_odd_sizes(model, image, backend):
    # The fused kernels decode each query on its own: tiling cannot change a bit. The plain-PyTorch
    # reference runs its layers as GEMMs, and MKL's blocking (so its rounding) depends on the number
    # of rows: there a tile may differ from the whole in the last bit or two (seen on an AVX512 CPU,
    # not on others). A tile that decoded the wrong rows would differ by far more than that.
    size = (37, 53) if backend != "triton" else (13, 11)     # (the interpreter is slow)
    whole = model.predict(image, output_size=size, backend=backend, tile=10**9)
    rtol = 4 * torch.finfo(torch.float32).eps if backend == "torch" else 0.0
    for tile in (1, 7, 53 * 3 + 1):                          # one row; rows with remainders
        torch.testing.assert_close(model.predict(image, output_size=size, backend=backend, tile=tile), whole,
                                   rtol=rtol, atol=0.0)


@pytest.mark.parametrize("region", [(0, 0, 37, 53), (5, 7, 6, 8), (11, 0, 30, 53), (36, 40, 37, 53)])
def test_region_is_exactly_the_crop_of_the_full_prediction(model, image, region):
    full = model.predict(image, output_size=(37, 53), backend="cpp")
    y0, x0, y1, x1 = region
    part = model.predict(image, output_size=(37, 53), backend="cpp", region=region, tile=5)
    assert part.shape == (1, 1, y1 - y0, x1 - x0)
    assert torch.equal(part, full[:, :, y0:y1, x0:x1])


def test_bad_regions_and_outputs_are_refused(model, image):
    for region in [(0, 0, 0, 5), (0, 0, 38, 53), (-1, 0, 5, 5), (3, 3, 2, 5), (1, 2, 3), (0, 0, 5.5, 5)]:
        with pytest.raises(ValueError, match="region"):
            model.predict(image, output_size=(37, 53), region=region)
    for size in [(10.5, 5), (8, "8"), (8,), (True, 3), (0, 5), (5, -1)]:   # not truncated to 10x5, not an obscure TypeError
        with pytest.raises(ValueError, match="output_size must be .*two positive whole numbers"):
            model.predict(image, output_size=size)
    sizes = [(np.int64(9), 7), torch.Size([9, 7]), (torch.tensor(9), 7), torch.tensor([9, 7])]  # integers are fine
    assert all(model.predict(image, output_size=s, backend="cpp").shape == (1, 1, 9, 7) for s in sizes)
    with pytest.raises(ValueError, match="float32 tensor"):
        model.predict(image, output_size=(8, 8), out=torch.empty(1, 1, 8, 9))
    with pytest.raises(ValueError, match="NumPy out"):
        model.predict(image, output_size=(8, 8), out=np.empty((8, 8), np.float64))
    with pytest.raises(ValueError, match="batch of 2"):
        model.predict(image.expand(2, -1, -1, -1), output_size=(8, 8), out=np.empty((8, 8), np.float32))
    # outputs that could not hold the answer are refused before any decoding
    read_only = np.zeros((8, 8), np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        model.predict(image, output_size=(8, 8), out=read_only)
    with pytest.raises(ValueError, match="meta device"):
        model.predict(image, output_size=(8, 8), out=torch.empty(1, 1, 8, 8, device="meta"))
    with pytest.raises(ValueError, match="overlapping"):
        model.predict(image, output_size=(8, 8), out=torch.empty(1, 1, 1, 8).expand(1, 1, 8, 8))
    with pytest.raises(TypeError, match="tile must be an integer"):
        model.predict(image, output_size=(8, 8), tile=2.5)



def test_regions_outside_the_width_are_refused_and_out_is_checked_exactly(model, image):
    """The region's x bounds are checked like its y bounds (they used to reach the grid as a slice:
    a negative x0 or an x1 past the width gave a reshape error or the wrong columns); out= is refused
    for each way it could not hold the answer, but an out with stride-0 size-1 dimensions is fine."""
    for region in [(0, 0, 5, 54), (0, -1, 5, 5), (0, 5, 5, 5)]:
        with pytest.raises(ValueError, match=r"region .* must satisfy .*0 <= x0 < x1 <= 53"):
            model.predict(image, output_size=(37, 53), region=region)
    for tile in (0, -3):
        with pytest.raises(ValueError, match="tile must be positive"):
            model.predict(image, output_size=(8, 8), tile=tile)
    with pytest.raises(ValueError, match="float32 tensor"):
        model.predict(image, output_size=(8, 8), out=torch.empty(1, 1, 8, 8, dtype=torch.float64))
    read_only = np.zeros((8, 8), np.float32)
    read_only.flags.writeable = False          # refused by name, not by NumPy's own error mid-decoding
    with pytest.raises(ValueError, match=r"the NumPy out is read-only .*'r\+'"):
        model.predict(image, output_size=(8, 8), out=read_only)
    out = torch.empty(8, 8).as_strided((1, 1, 8, 8), (0, 0, 8, 1))   # stride 0 on size-1 dimensions: no overlap
    assert model.predict(image, output_size=(8, 8), out=out, backend="cpp") is out
    assert torch.equal(out, model.predict(image, output_size=(8, 8), backend="cpp"))


def test_a_region_streams_into_a_numpy_out(model, image):
    """A NumPy out (the CLI's memory map) holds only the region: tile rows are written at their offset
    in the region, not at their row of the full grid."""
    full = model.predict(image, output_size=(37, 53), backend="cpp")[0, 0].numpy()
    out = np.full((19, 40), -1.0, np.float32)
    assert model.predict(image, output_size=(37, 53), backend="cpp", region=(11, 7, 30, 47), tile=3 * 40, out=out) is out
    np.testing.assert_array_equal(out, full[11:30, 7:47])


def test_an_output_too_large_for_memory_is_refused_by_name(model, image):
    # 16M x 16M float32 is 1 PiB: more than a 64-bit process can map, whatever the overcommit policy
    with pytest.raises(MemoryError, match=r"\[1, 1, 16777216, 16777216\].*1048576\.0 GiB.*out=.*region="):
        model.predict(image, output_size=(2**24, 2**24))
    part = model.predict(image, output_size=(2**24, 2**24), region=(2**23, 2**23, 2**23 + 3, 2**23 + 5), backend="cpp")
    assert part.shape == (1, 1, 3, 5) and torch.isfinite(part).all()   # the way out the message names


def test_memory_mapped_output_round_trips(model, image, tmp_path):
    path = tmp_path / "depth.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(29, 41))
    model.predict(image, output_size=(29, 41), out=mm, tile=100)
    mm.flush()
    del mm
    expected = model.predict(image, output_size=(29, 41))[0, 0].numpy()
    np.testing.assert_array_equal(np.load(path), expected)
    # and into a preallocated tensor
    out = torch.full((1, 1, 29, 41), -1.0)
    assert model.predict(image, output_size=(29, 41), out=out) is out
    np.testing.assert_array_equal(out[0, 0].numpy(), expected)


@pytest.fixture
def picture(tmp_path):
    path = tmp_path / "pic.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(path)
    return path


def test_cli_region_writes_the_crop(picture, tmp_path, capsys):
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["predict", str(picture), "--output-size", "90x130", "--out", str(full), "--quiet"]) == 0
    assert main(["predict", str(picture), "--output-size", "90x130", "--region", "10,20,41,99", "--ply", "--keep-outliers",
                 "--out", str(part), "--quiet"]) == 0
    crop = np.load(part / "pic_depth.npy")
    np.testing.assert_array_equal(crop, np.load(full / "pic_depth.npy")[10:41, 20:99])
    from plyfile import PlyData

    assert len(PlyData.read(str(part / "pic.ply"))["vertex"]) == 31 * 79
    assert main(["predict", str(picture), "--output-size", "90x130", "--region", "10,20,91,99", "--out", str(part)]) == 2
    assert "--region" in capsys.readouterr().err


def test_cli_streams_a_map_larger_than_memory_into_a_memory_mapped_npy(picture, tmp_path, monkeypatch, capsys):
    ref = tmp_path / "ref"
    assert main(["predict", str(picture), "--output-size", "70x90", "--out", str(ref), "--quiet"]) == 0
    monkeypatch.setattr(cli, "available_memory", lambda: 1000)      # pretend 1 kB is free
    big = tmp_path / "big"
    assert main(["predict", str(picture), "--output-size", "70x90", "--out", str(big)]) == 0
    assert "memory-mapped" in capsys.readouterr().out
    np.testing.assert_array_equal(np.load(big / "pic_depth.npy"), np.load(ref / "pic_depth.npy"))
    assert sorted(p.name for p in big.iterdir()) == ["pic_depth.npy"]            # no temporary left behind
    assert main(["predict", str(picture), "--output-size", "70x90", "--ply", "--out", str(big)]) == 2
    assert "does not fit in memory" in capsys.readouterr().err


def test_cli_refuses_a_streamed_map_the_disk_cannot_hold(picture, tmp_path, monkeypatch, capsys):
    # A memory-mapped write into a full disk is a SIGBUS (the process dies, its temporary stays),
    # so the room is checked before anything is computed.
    monkeypatch.setattr(cli, "available_memory", lambda: 1000)
    monkeypatch.setattr(cli, "free_disk_space", lambda path: 70 * 90 * 4)          # the array, but not its header
    out = tmp_path / "full"
    assert main(["predict", str(picture), "--output-size", "70x90", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "the 70x90 map needs 0.00 GB" in err and "--region" in err
    assert not out.exists() or not any(out.iterdir())
    monkeypatch.setattr(cli, "free_disk_space", lambda path: 70 * 90 * 4 + 4096)
    assert main(["predict", str(picture), "--output-size", "70x90", "--out", str(out), "--quiet"]) == 0
    assert np.load(out / "pic_depth.npy").shape == (70, 90)


def test_cli_refuses_an_output_folder_it_cannot_write_before_any_work(picture, tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    for command in (["predict", str(picture)], ["gs", str(picture)]):
        assert main(command + ["--out", str(tmp_path / "a_file" / "sub")]) == 2
        err = capsys.readouterr()
        assert "a_file is a file, not a folder" in err.err and "decoding" not in err.err + err.out, command


def test_sigterm_removes_the_streamed_temporary(picture, tmp_path):
    # A real kill, in a separate process: the streamed map's temporary file is deleted on the way out.
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed"
    script = ("import sys, infinidepth.cli as c; c.available_memory = lambda: 1000; "
              f"sys.exit(c.main(['predict', {str(picture)!r}, '--output-size', '6000x8000', '--out', {str(out)!r}]))")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (out.exists() and any(out.iterdir())) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        assert [p.name.startswith(".pic_depth.") for p in out.iterdir()] == [True]   # the temporary, being written
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "terminated; files not yet complete were removed" in err
    assert list(out.iterdir()) == []
    assert os.path.isdir(out)


def test_bench_reports_every_path_with_ratios(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--preset", "tiny", "--sizes", "32x48,17x23", "--paths", "released-style,torch,cpp",
                 "--json", str(out), "--quiet", "--repeats", "2"]) == 0
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert report["precision"] == "fp32" and all(r["repeats"] == 2 for r in rows)
    assert all(r["in_memory_s"] < r["total_s"] for r in rows)
    assert [(r["size"], r["path"]) for r in rows] == [(s, p) for s in ("32x48", "17x23") for p in ("released-style", "torch", "cpp")]
    for r in rows:
        assert r["encode_s"] > 0 and r["decode_s"] > 0 and r["write_s"] > 0 and r["queries"] in (32 * 48, 17 * 23)
        assert r["total_speedup_vs_released"] > 0 and r["output_mb"] > 0
    assert all(r["decode_speedup_vs_released"] == 1.0 for r in rows if r["path"] == "released-style")
    assert main(["bench", "--sizes", "3k"]) == 2
    assert "--sizes must look like HxW or one of 1k, 2k, 4k, 8k, 16k" in capsys.readouterr().err
    assert main(["bench", "--sizes", "1x17000000"]) == 2   # pixel centres no longer distinct in float32
    assert "--sizes: sides of at most 16777216 (2**24) pixels, got '1x17000000'" in capsys.readouterr().err
    assert main(["bench", "--paths", "cuda", "--device", "cpu"]) == 2
    assert "not available" in capsys.readouterr().err
    assert main(["bench", "--preset", "tiny", "--device", "cpu", "--precision", "fp16"]) == 2
    assert "fp16 needs a CUDA device" in capsys.readouterr().err
    if cpu_supports_bf16():   # every CPU path, the released-style baseline under autocast too: ratios in bf16
        out = tmp_path / "bf16.json"
        assert main(["bench", "--preset", "tiny", "--device", "cpu", "--precision", "bf16", "--sizes", "8x8",
                     "--input-size", "32x48", "--json", str(out), "--quiet"]) == 0
        report = json.loads(out.read_text())
        assert report["precision"] == "bf16" and [r["path"] for r in report["rows"]] == ["released-style", "torch", "cpp"]
        assert all(r["decode_speedup_vs_released"] > 0 for r in report["rows"])
    assert main(["bench", "--preset", "tiny", "--repeats", "0"]) == 2
    assert "--repeats" in capsys.readouterr().err
    assert main(["bench", "--preset", "tiny", "--input-size", "30x40"]) == 2
    assert "multiples of 16" in capsys.readouterr().err


def test_bench_encodes_at_the_size_the_model_runs_at(tmp_path):
    """A checkpoint that records its training input is timed at that input (what `predict` feeds it),
    one without at the released model's 768x1024, and --input-size overrides both."""
    from infinidepth import bench

    model = from_preset("tiny")
    assert bench.bench(model, [("s", (8, 8))], torch.device("cpu"), ["torch"], warmup=False, progress=False)["input"] == [768, 1024]
    model.input_size = (32, 48)
    assert bench.bench(model, [("s", (8, 8))], torch.device("cpu"), ["torch"], warmup=False, progress=False)["input"] == [32, 48]
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    out = tmp_path / "bench.json"
    assert main(["bench", "--checkpoint", str(path), "--sizes", "8x8", "--paths", "torch", "--json", str(out), "--quiet"]) == 0
    assert json.loads(out.read_text())["input"] == [32, 48]
    assert main(["bench", "--checkpoint", str(path), "--sizes", "8x8", "--paths", "torch", "--json", str(out), "--quiet",
                 "--input-size", "16x32"]) == 0
    assert json.loads(out.read_text())["input"] == [16, 32]


def test_model_precision_is_checked():
    from infinidepth.models import from_preset

    model = from_preset("tiny")
    image = torch.rand(1, 3, 32, 32)
    model.precision = "fp16"
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        model.encode(image)
    if cpu_supports_bf16():  # the encoder under CPU autocast; the maps come out in fp32
        model.precision = "bf16"
        maps = model.encode(image).maps
        assert all(m.dtype == torch.float32 for m in maps)
        model.precision = "fp32"
        exact = model.encode(image).maps
        assert not all(torch.equal(a, b) for a, b in zip(maps, exact))  # really computed in bf16
        want = model.predict(image, output_size=(37, 53))
        model.precision = "bf16"
        got = model.predict(image, output_size=(37, 53))  # encoder and cpp decoder in bf16
        err = ((got - want).norm() / (want - want.mean()).norm()).item()
        assert 1e-5 < err < 5e-2
    model.precision = "fp8"
    with pytest.raises(ValueError, match="precision must be one of"):
        model.encode(image)
    model.precision = "fp32"
    assert model.encode(image).maps[0].dtype == torch.float32


def test_bench_table_leaves_ratios_blank_without_a_baseline():
    """A run without the released-style path (e.g. --precision bf16) has no ratios: the table shows
    "-" there, not nan; with the baseline, each row's ratio is printed."""
    from infinidepth import bench

    model = from_preset("tiny")
    alone = bench.bench(model, [("s", (8, 8))], torch.device("cpu"), ["torch"], warmup=False, progress=False, input_size=(32, 48))
    table = bench.format_rows(alone)
    assert "nan" not in table
    row = table.splitlines()[2].split()
    assert row[:2] == ["s", "torch"] and row[8:10] == ["-", "-"]
    both = bench.bench(model, [("s", (8, 8))], torch.device("cpu"), [bench.BASELINE, "torch"], warmup=False, progress=False,
                       input_size=(32, 48))
    rows = bench.format_rows(both).splitlines()[2:4]
    assert [r.split()[8] for r in rows][0] == "1.00"
    assert float(rows[1].split()[8]) == pytest.approx(both["rows"][1]["decode_speedup_vs_released"], abs=0.006)
