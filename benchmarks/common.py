"""Timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from infinidepth.bench import command_line, device_name, sync  # noqa: F401  (one copy, shared with infinidepth bench)


def timeit(fn, device: torch.device, min_time: float = 2.0, max_iters: int = 20) -> float:
    """Median seconds per call after one warm-up call (compilation, caches): each call is timed on its
    own between synchronisations of the device (a GPU's queue is empty before and after it), so a
    call interrupted by another process on a shared machine moves the median little, unlike a mean.
    At least 3 calls, then more while under ``min_time`` seconds in all, at most ``max_iters``."""
    fn()
    sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (len(times) < max_iters and time.perf_counter() - start < min_time):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cli_device(text: str, prog: str) -> torch.device:
    """``--device`` of a script: what this machine lacks (CUDA here) ends the script with one clear line."""
    from infinidepth.cli import pick_device
    from infinidepth.io import InputError

    try:
        return pick_device(text)
    except InputError as e:
        raise SystemExit(f"{prog}: error: {e}") from None


def positive_int(text: str) -> int:
    """An argparse ``type``: a whole number above 0 (a count of queries, points, scenes, channels)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def size_arg(form: str = "HxW (e.g. 96x128)"):
    """An argparse ``type`` for one size ``A``x``B`` (positive, written as ``form`` says), as a tuple."""
    def parse(text: str) -> tuple[int, int]:
        from infinidepth.cli import parse_size
        from infinidepth.io import InputError

        try:
            return parse_size(text, "the size", form)
        except InputError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def sizes_arg(form: str = "HxW (e.g. 96x128)"):
    """An argparse ``type`` for a comma-separated list of sizes (see :func:`size_arg`)."""
    one = size_arg(form)

    def parse(text: str) -> list[tuple[int, int]]:
        return [one(item.strip()) for item in text.split(",")]
    return parse


def write_report(path: str | None, report: dict, argv: list[str] | None = None) -> None:
    """The report as JSON at ``path`` (atomically; nothing when path is None), with the torch
    version and the command line that made it (``argv``: default this process's) unless it has them."""
    if not path:
        return
    import json

    from infinidepth.io import atomic_path

    report = {**report}
    report.setdefault("torch", torch.__version__)
    report.setdefault("command", command_line(argv))
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")


def score_line(summary: dict) -> str:
    """AbsRel and delta < 1.25 on the full image and on the high-frequency pixels, on one line."""
    full, hf = summary["full"], summary["hf"]
    return (f"full AbsRel {full['abs_rel']:.4f} d1 {full['delta_1.25']:.4f} | "
            f"HF AbsRel {hf['abs_rel']:.4f} d1 {hf['delta_1.25']:.4f}")
