"""Do plain splats of the surface-area sampler's points close the surface they sample? A fronto-parallel
plane filling a 96x128 grid, sampled at several densities (samples per grid pixel), splatted by
``splats_from_points`` and rendered from the source camera at 4x the grid's resolution.

    python benchmarks/splat_coverage.py --json benchmarks/results/splat_coverage_cpu.json

Reported per density: the fraction of rendered pixels (a 2-pixel border left out) whose accumulated
opacity is below 0.9 (specks: the black background shows through) and below 0.5 (holes). A plane
seen head-on gets the same weight in every pixel, so any shortfall comes from where the samples fall
inside their pixels, not from the weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import device_name, write_report  # noqa: E402

from infinidepth.gs import hole_fraction, render, splats_from_points  # noqa: E402
from infinidepth.sampling import backproject, surface_area_sample  # noqa: E402

H, W, DEPTH, UP = 96, 128, 2.7, 4


def coverage(per_pixel: float, seed: int) -> dict:
    K = torch.tensor([[128.0, 0, W / 2], [0, 128.0, H / 2], [0, 0, 1]])
    depth = torch.full((1, 1, H, W), DEPTH)
    normals = torch.zeros(1, 3, H, W)
    normals[:, 2] = -1
    n = round(per_pixel * H * W)
    coords = surface_area_sample(depth, normals, K, n, seed=seed)
    points = backproject(torch.full((1, n), DEPTH), coords, K[None], (H, W))[0]
    K_up = K.clone()
    K_up[:2] *= UP
    alpha = render(splats_from_points(points, torch.full_like(points, 0.5)), torch.eye(4), K_up, (H * UP, W * UP))["alpha"]
    inner = alpha[2 * UP:-2 * UP, 2 * UP:-2 * UP]
    return {"samples_per_pixel": per_pixel, "points": n, "alpha_below_0.9": hole_fraction(inner, threshold=0.9),
            "alpha_below_0.5": hole_fraction(inner)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--densities", default="0.25,1,4,16", help="samples per grid pixel, comma-separated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args()
    try:
        densities = [float(d) for d in args.densities.split(",")]
        if not all(0 < d <= 64 for d in densities):
            raise ValueError
    except ValueError:
        ap.error(f"--densities must be comma-separated numbers in (0, 64], got {args.densities!r}")
    rows = []
    print(f"{'per pixel':>9} {'points':>8} {'alpha<0.9':>10} {'alpha<0.5':>10}")
    for d in densities:
        r = coverage(d, args.seed)
        rows.append(r)
        print(f"{d:9g} {r['points']:8d} {r['alpha_below_0.9']:10.4f} {r['alpha_below_0.5']:10.4f}")
    write_report(args.json, {"benchmark": "plain-splat coverage of a plane", "device": device_name(torch.device("cpu")),
                             "grid": [H, W], "render_scale": UP, "rows": rows})


if __name__ == "__main__":
    main()
