"""Procedural renderer timing: seconds per frame at each size, and a preview of one frame.

    python benchmarks/render.py --device cpu --sizes 1024x768,3840x2160 --scenes 4 \
        --json benchmarks/results/render_cpu.json --preview benchmarks/results/render_4k.jpg

Sizes are WIDTHxHEIGHT, as `infinidepth data render --size` takes them. Each scene is rendered once
per size (a render is seconds long; no repeats needed), after one untimed small render (first-call
costs: CUDA's start, kernel loads); the report has every frame's time, the mean,
and the number of primitives. The preview puts the last size's RGB of the first scene above its
colourised depth (sky in white), downscaled to 1920 wide.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import cli_device, device_name, positive_int, sizes_arg, sync, write_report  # noqa: E402

from infinidepth.data.procedural import generate_scene, render  # noqa: E402
from infinidepth.io import atomic_path, colorize_depth  # noqa: E402


def preview(r, path: str) -> None:
    from PIL import Image

    rgb = (r.rgb.cpu().numpy() * 255).round().astype(np.uint8)
    d = r.depth.cpu().numpy()
    col = colorize_depth(np.where(d > 0, d, d[d > 0].max() if (d > 0).any() else 1.0))
    col[d == 0] = 255
    both = Image.fromarray(np.concatenate([rgb, col], axis=0))
    both = both.resize((1920, round(both.height * 1920 / both.width)), Image.Resampling.LANCZOS)
    with atomic_path(path) as tmp:
        both.save(tmp, format="JPEG", quality=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", type=sizes_arg("WIDTHxHEIGHT (e.g. 1024x768)"), default="1024x768,3840x2160")
    ap.add_argument("--scenes", type=positive_int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    ap.add_argument("--preview")
    args = ap.parse_args()
    device = cli_device(args.device, ap.prog)
    sizes = args.sizes
    scenes = [generate_scene(args.seed + k) for k in range(args.scenes)]
    render(scenes[0], (48, 64), device=device)   # warm-up, untimed
    sync(device)
    rows = []
    for w, h in sizes:
        times = []
        for scene in scenes:
            sync(device)
            t0 = time.perf_counter()
            r = render(scene, (h, w), device=device)
            sync(device)
            times.append(time.perf_counter() - t0)
        rows.append({"size": f"{w}x{h}", "seconds_per_frame": times, "mean_seconds": float(np.mean(times)),
                     "megapixels_per_second": w * h / 1e6 / float(np.mean(times))})
        print(f"{w}x{h}: mean {np.mean(times):.2f} s per frame (min {min(times):.2f}, max {max(times):.2f}) "
              f"over {len(scenes)} scenes")
    if args.preview:
        preview(render(scenes[0], (sizes[-1][1], sizes[-1][0]), device=device), args.preview)
    write_report(args.json, {
        "benchmark": "procedural render", "device": device_name(device), "torch": torch.__version__,
        "scenes": [{"seed": s.seed, "kind": s.kind, "primitives": len(s.primitives)} for s in scenes],
        "results": rows,
    })


if __name__ == "__main__":
    main()
