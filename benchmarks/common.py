"""Timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import time

from infinidepth.bench import device_name, sync  # noqa: F401  (one copy, shared with infinidepth bench)


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


def write_report(path: str | None, report: dict) -> None:
    """The report as JSON at ``path`` (atomically; nothing when path is None)."""
    if not path:
        return
    import json

    from infinidepth.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")


def score_line(summary: dict) -> str:
    """AbsRel and delta < 1.25 on the full image and on the high-frequency pixels, on one line."""
    full, hf = summary["full"], summary["hf"]
    return (f"full AbsRel {full['abs_rel']:.4f} d1 {full['delta_1.25']:.4f} | "
            f"HF AbsRel {hf['abs_rel']:.4f} d1 {hf['delta_1.25']:.4f}")
