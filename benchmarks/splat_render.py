"""Gaussian rasteriser timing: the plain-PyTorch reference against the C++ CPU kernel (and gsplat
on a GPU), on the Gaussians `infinidepth gs` makes of the bundled picture.

    python benchmarks/splat_render.py --device cpu --points 200000 --sizes 384x512,768x1024 \
        --json benchmarks/results/splat_render_cpu.json

The scene is exactly what `infinidepth gs IMAGE --gs-head demo --points N` renders (the demo depth
model's surface-area points through the bundled GS head). Each size is rendered from the source
camera and from the moved camera of the command's novel view. Reported per row: seconds per frame
of each backend (the reference: one call, after an untimed small render; the others: the median of
repeated calls after a warm-up call), ``speedup_vs_torch`` = the reference's time / the backend's
(above 1: faster), and the largest difference from the reference's image.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import cli_device, device_name, positive_int, sizes_arg, sync, timeit, write_report  # noqa: E402

from infinidepth.cli import build_parser, run_gs  # noqa: E402
from infinidepth.gs.render import render  # noqa: E402
from infinidepth.gs.splats import camera_path  # noqa: E402


def make_scene(points: int, device: str):
    """The Gaussians of `infinidepth gs` on the bundled picture, the picture's size and the points' median depth."""
    from PIL import Image

    with resources.as_file(resources.files("infinidepth") / "assets" / "demo.png") as image, \
            tempfile.TemporaryDirectory() as out:
        args = build_parser().parse_args(["gs", str(image), "--gs-head", "demo", "--points", str(points),
                                          "--out", out, "--device", device, "--quiet"])
        g = run_gs(args)["gaussians"]
        W0, H0 = Image.open(image).size
    return g, (H0, W0), float(g.means[:, 2].median())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--points", type=positive_int, default=200_000)
    p.add_argument("--sizes", type=sizes_arg(), default="384x512", help="render sizes HxW, comma-separated")
    p.add_argument("--min-time", type=float, default=2.0, help="seconds of repeats per fast measurement")
    p.add_argument("--json")
    a = p.parse_args()
    device = cli_device(a.device, p.prog)
    backends = ["torch", "cpp"] if device.type == "cpu" else ["torch", "gsplat"]
    g, (H0, W0), depth = make_scene(a.points, a.device)
    moved = camera_path("swing", 4, depth, 0.05 * depth)[1]            # the command's novel view (default --move)
    rows = []
    warm = torch.tensor([[32.0, 0, 16], [0, 32.0, 16], [0, 0, 1]])
    render(g, torch.eye(4), warm, (32, 32), backend="torch")   # first-call costs, untimed
    for H, W in a.sizes:
        fx = float(max(H0, W0))
        K = torch.tensor([[fx * W / W0, 0, W / 2], [0, fx * H / H0, H / 2], [0, 0, 1]])
        for camera, w2c in (("source", np.eye(4)), ("moved", moved)):
            w2c = torch.as_tensor(w2c)
            row = {"size": f"{H}x{W}", "camera": camera, "gaussians": len(g)}
            # the reference takes tens of seconds a frame here: one call, timed, gives its image too
            sync(device)
            start = time.perf_counter()
            ref = render(g, w2c, K, (H, W), backend="torch")["rgb"]
            sync(device)
            row["torch"] = {"s_per_frame": time.perf_counter() - start, "max_abs_diff_rgb": 0.0}
            for b in backends[1:]:
                seconds = timeit(lambda: render(g, w2c, K, (H, W), backend=b), device, min_time=a.min_time)
                img = render(g, w2c, K, (H, W), backend=b)["rgb"]
                row[b] = {"s_per_frame": seconds, "max_abs_diff_rgb": float((img - ref).abs().max())}
            for b in backends:
                row[b]["speedup_vs_torch"] = row["torch"]["s_per_frame"] / row[b]["s_per_frame"]
            rows.append(row)
            print(f"{row['size']} {camera:6s} " + "  ".join(
                f"{b} {row[b]['s_per_frame']:.3f} s ({row[b]['speedup_vs_torch']:.1f}x, max diff {row[b]['max_abs_diff_rgb']:.1e})"
                for b in backends))
    write_report(a.json, {"device": device_name(device), "points": a.points, "torch_threads": torch.get_num_threads(),
                          "rows": rows})   # write_report adds the command line, quoted as a shell takes it


if __name__ == "__main__":
    main()
