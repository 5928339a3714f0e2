"""End-to-end timing of dense prediction at large sizes: ``infinidepth bench``.

For each output size and each decoder path, one image is encoded, every output pixel is decoded into
a preallocated map, and the map is written to disk as ``.npy``. The input is the size the model is
run at: its training input when the checkpoint records one (the CLI's default for a picture of that
aspect), else 768x1024, the released model's (to multiples of the model's ViT patch); ``input_size``
overrides. The paths:

- ``released-style``: the decoder run as the released code runs it (plain PyTorch, grid_sample per
  map, concatenation, MLP, in chunks of exactly 10,000 queries, whatever the output's width): the
  baseline of the ratios;
- ``torch``: our plain-PyTorch reference, in large tiles;
- ``cpp`` / ``cuda`` / ``triton``: the fused kernels (Triton only on a GPU: on the CPU it runs
  under the interpreter, for tests, not for speed).

Reported per row: encode, decode and write seconds, ``in_memory_s`` (encode + decode: the depth map in
memory, what the 8K target counts), the end-to-end total with the write, queries per second, the
speed-ups over the baseline (``*_speedup_vs_released`` = the baseline's time / this path's time, for
decode and end to end: above 1 is faster than the released-style path), and memory: the decoder's working memory
(peak during decode beyond what existed before it: features, weights and the output map), from the
allocator on a GPU and from the process's resident-memory high-water mark on Linux CPUs (reset before
each decode), plus the output's own size. The total excludes allocating and zeroing the output.

Every path decodes the same encoded image in the same tiles of output rows (decode_grid's default tile). Before
anything is timed, each path runs once on a small map and once on each distinct tile of each size
(compilation, Triton's autotuning per query count, allocator caches: not what a user waits for
each image); the report records the command line, the device and the torch version.
"""

from __future__ import annotations

import os
import platform
import resource
import shlex
import sys
import tempfile
import time

import numpy as np
import torch

from infinidepth.models.base import default_tile

SIZES = {"1k": (768, 1024), "2k": (1080, 1920), "4k": (2160, 3840), "8k": (4320, 7680), "16k": (8640, 15360)}
INPUT = (768, 1024)
BASELINE = "released-style"
BASELINE_CHUNK = 10_000


def paths(device: torch.device) -> list[str]:
    from infinidepth.ops import available_backends

    fused = [b for b in available_backends(device) if b != "torch" and not (b == "triton" and device.type == "cpu")]
    return [BASELINE, "torch", *fused]


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def _rss(field: str) -> int | None:
    """Bytes of ``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process (Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Hand freed heap memory back to the system, then reset the peak, so that what the decoder
    allocates shows as growth of the resident set even where it reuses memory freed earlier."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def tile_rows(device, width: int) -> int:
    """Output rows per tile for an output ``width`` wide: decode_grid's default tile, passed
    explicitly so that the warm-up meets every tile shape the timed runs decode."""
    return max(1, default_tile(device) // width)


def decode_released_style(model, feats, size, out) -> None:
    """The dense map as the released code decodes it: the queries' coordinates, then the plain-PyTorch
    decoder in chunks of exactly ``BASELINE_CHUNK`` queries (a chunk may span output rows), depth
    written into ``out`` [B, 1, H, W]. The coordinates are made one tile of rows at a time (bounded
    memory); a tile holds many chunks, so chunk sizes are 10,000 but for one remainder per tile."""
    from infinidepth.models.base import _grid

    H, W = size
    B, rows = feats.batch, tile_rows(model.device, W)
    for r0 in range(0, H, rows):
        r1 = min(H, r0 + rows)
        raw = model.decode(feats, _grid(H, W, r0, r1, 0, W, B, model.device), backend="torch", chunk=BASELINE_CHUNK)
        out[:, :, r0:r1] = model.to_depth(raw).float().reshape(B, 1, r1 - r0, W)


def decode_path(model, feats, size, path: str, out) -> None:
    """One dense decode of ``size`` into ``out`` by ``path``."""
    if path == BASELINE:
        decode_released_style(model, feats, size, out)
    else:
        model.decode_grid(feats, size, backend=path, tile=tile_rows(model.device, size[1]) * size[1], out=out)


def warm_up(model, image, sizes, paths_to_run) -> None:
    """Every path on a small map, then on each distinct tile of every size (the first full tile and
    the last, shorter one), untimed: compilation, Triton's autotuning (once per query count bucket),
    cuBLAS's choices and the caching allocator are then done before the timed runs."""
    for p in paths_to_run:
        run_one(model, image, (64, 64), p)
    feats = model.encode(image)
    for _, (H, W) in sizes:
        rows = tile_rows(model.device, W)
        heights = {min(rows, H), H % rows if H > rows else 0} - {0}
        for p in paths_to_run:
            for h in heights:
                out = torch.zeros((feats.batch, 1, h, W), device=model.device)
                if p == BASELINE:
                    decode_released_style(model, feats, (h, W), out)   # the same chunks as any tile of H x W
                else:   # rows 0..h of the full-size grid: that tile's coordinates, one tile of h x W queries
                    model.decode_grid(feats, (H, W), backend=p, tile=rows * W, region=(0, 0, h, W), out=out)
    sync(model.device)
    del feats


def run_one(model, image, size, path: str) -> dict:
    device = model.device
    sync(device)
    t0 = time.perf_counter()
    feats = model.encode(image)
    sync(device)
    t1 = time.perf_counter()
    out = torch.zeros((1, 1, *size), device=device)   # touched: its pages count as the output, not the decoder
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        cpu_peak = _reset_peak_rss()
        before = _rss("VmRSS")
    t1b = time.perf_counter()
    decode_path(model, feats, size, path, out)
    sync(device)
    t2 = time.perf_counter()
    memory = {}
    if device.type == "cuda":
        memory["decoder_working_mb"] = (torch.cuda.max_memory_allocated(device) - before) / 2**20
        memory["peak_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    elif cpu_peak and before is not None:
        memory["decoder_working_mb"] = max(0, _rss("VmHWM") - before) / 2**20
    with tempfile.TemporaryDirectory() as tmp:
        np.save(os.path.join(tmp, "depth.npy"), out[0, 0].cpu().numpy())
    t3 = time.perf_counter()
    memory["output_mb"] = size[0] * size[1] * 4 / 2**20
    memory["process_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    del out, feats
    decode = t2 - t1b
    return {"encode_s": t1 - t0, "decode_s": decode, "write_s": t3 - t2, "in_memory_s": (t1 - t0) + decode,
            "total_s": (t1 - t0) + decode + (t3 - t2),
            "queries_per_s": size[0] * size[1] / decode, **memory}


def bench(model, sizes, device, paths_to_run=None, warmup: bool = True, progress: bool = True, repeats: int = 1,
          input_size: tuple[int, int] | None = None) -> dict:
    """Rows of :func:`run_one` for every size and path (median times of ``repeats`` runs), with
    ratios to the baseline."""
    from tqdm import tqdm

    from infinidepth.cli import default_input_size

    # else 768x1024, or the nearest multiples of another patch (DINOv2: 14)
    input_size = tuple(input_size or model.input_size or default_input_size(*INPUT, patch=model.patch_size))
    image = torch.rand(1, 3, *input_size, generator=torch.Generator().manual_seed(0)).to(device)
    todo = paths_to_run or paths(device)
    if warmup:  # compilation, autotuning, caches, the fold: not what a 16K user waits for each image
        warm_up(model, image, sizes, todo)
    rows = []
    jobs = [(name, size, p) for name, size in sizes for p in todo]
    for name, size, p in tqdm(jobs, desc="benchmark", unit="run", disable=not progress):
        runs = [run_one(model, image, size, p) for _ in range(repeats)]
        row = {"size": name, "output": list(size), "queries": size[0] * size[1], "path": p, **runs[-1], "repeats": repeats}
        for key in ("encode_s", "decode_s", "write_s", "in_memory_s", "total_s"):
            row[key] = float(np.median([r[key] for r in runs]))
        row["queries_per_s"] = row["queries"] / row["decode_s"]
        rows.append(row)
    for row in rows:
        base = next((r for r in rows if r["size"] == row["size"] and r["path"] == BASELINE), None)
        if base is not None:
            row["decode_speedup_vs_released"] = base["decode_s"] / row["decode_s"]
            row["total_speedup_vs_released"] = base["total_s"] / row["total_s"]
    return {"benchmark": "end-to-end dense prediction", "device": device_name(device), "torch": torch.__version__,
            "command": command_line(), "input": list(input_size), "arch": model.arch, "precision": model.precision,
            "rows": rows}


def command_line(argv: list[str] | None = None) -> str:
    """The command that made a report, as a shell would take it (``argv``: default this process's)."""
    return shlex.join(sys.argv if argv is None else argv)


def format_rows(report: dict) -> str:
    head = (f"{'size':>6} {'path':>15} {'encode s':>9} {'decode s':>9} {'in mem s':>9} {'write s':>8} {'total s':>8} "
            f"{'Mq/s':>8} {'x decode':>9} {'x total':>8} {'memory MB':>10}")
    lines = [f"{report['arch']} on {report['device']}, input {report['input'][0]}x{report['input'][1]}, "
             f"{report.get('precision', 'fp32')}", head]
    def cell(r: dict, key: str, width: int, fmt: str) -> str:   # "-" where there is nothing to report (no baseline run)
        return f"{r[key]:{width}{fmt}}" if key in r else f"{'-':>{width}}"

    for r in report["rows"]:
        lines.append(f"{r['size']:>6} {r['path']:>15} {r['encode_s']:9.3f} {r['decode_s']:9.3f} {r['in_memory_s']:9.3f} {r['write_s']:8.3f} "
                     f"{r['total_s']:8.3f} {r['queries_per_s'] / 1e6:8.2f} {cell(r, 'decode_speedup_vs_released', 9, '.2f')} "
                     f"{cell(r, 'total_speedup_vs_released', 8, '.2f')} {cell(r, 'decoder_working_mb', 10, '.0f')}")
    lines.append("x decode, x total: the released-style path's time / this path's (above 1: faster); "
                 "memory: the decoder's working memory beyond the features and the output map")
    return "\n".join(lines)
