"""Timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import platform
import time

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, device: torch.device, min_time: float = 2.0, max_iters: int = 20) -> float:
    """Mean seconds per call after one warm-up call (compilation, caches)."""
    fn()
    sync(device)
    iters, start = 0, time.perf_counter()
    while iters < max_iters and (iters < 2 or time.perf_counter() - start < min_time):
        fn()
        iters += 1
    sync(device)
    return (time.perf_counter() - start) / iters


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def write_report(path: str | None, report: dict) -> None:
    """The report as JSON at ``path`` (atomically; nothing when path is None)."""
    if not path:
        return
    import json

    from infinidepth.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
