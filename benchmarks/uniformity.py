"""How evenly do the samplers cover surfaces? The pixel grid, the released triangle-area sampler and
our surface-area sampler, at the same point budget, on analytic scenes with exact depth.

    python benchmarks/uniformity.py --size 240x320 --baseline 0.5 --json benchmarks/results/uniformity.json \
        --plot benchmarks/results/uniformity.png

Per scene: the dense depth (and, for ours, its exact derivative -> normals) at the pixel centres;
each sampler picks query coordinates; depth is re-queried there and back-projected. Reported: the
coefficient of variation of the 8-NN spacing of the 3D points (lower = more uniform), its 90/10
percentile ratio, and the fraction of empty pixels when the points are splatted into a camera moved
sideways by --baseline (scene units; only pixels that see surface visible from the source count).
The budget is the number of pixels with a surface, so the grid is the plain per-pixel point cloud.
"""

from __future__ import annotations

import argparse

import torch

from common import size_arg, write_report

from infinidepth.ops import grid_coords
from infinidepth.sampling import (backproject, hole_fraction, knn_spacing, surface_area_sample, surface_normals,
                                  triangle_area_sample, uniformity)
from infinidepth.sampling.scenes import standard_scenes


def points_at(scene, coords):
    depth = scene.depth(coords.double())
    keep = depth[0] > 0  # a jittered sample can cross the edge of a surface (e.g. into the sky)
    pts = backproject(depth, coords.double(), scene.intrinsics[None], scene.size)[0]
    return pts[keep], int((~keep).sum())


def evaluate(scene, baseline: float, k: int, seed: int, keep_points: bool = False) -> list[dict]:
    H, W = scene.size
    K = scene.intrinsics
    dense = grid_coords(H, W).double()
    depth, grad = scene.depth_and_grad(dense)
    depth_map = depth.reshape(1, 1, H, W)
    valid = depth[0] > 0
    n = int(valid.sum())
    normals = surface_normals(depth_map, grad.reshape(1, H, W, 2).permute(0, 3, 1, 2), K)
    samplers = {
        "pixel grid": lambda: dense[:, valid],
        "triangle (released)": lambda: triangle_area_sample(depth_map, K, n),
        "surface area (ours)": lambda: surface_area_sample(depth_map, normals, K, n, seed=seed),
    }
    target = scene.moved_view_target(baseline)
    rows = []
    for name, sample in samplers.items():
        try:
            coords = sample()
        except ValueError as e:   # the released rule prunes every triangle of a coarse ground plane (24x32)
            if "every triangle was pruned" not in str(e):
                raise   # anything else is a bug or bad input, not a row of the table
            rows.append({"scene": scene.name, "sampler": name, "budget": n, "points": 0, "error": str(e)})
            continue
        pts, dropped = points_at(scene, coords)
        u = uniformity(pts, k=k)
        rows.append({
            "scene": scene.name, "sampler": name, "budget": n, "points": u["points"], "dropped": dropped,
            "knn_cv": u["knn_cv"], "knn_p90_p10": u["knn_p90_p10"],
            "hole_fraction": hole_fraction(pts, K, scene.size, baseline, target),
        })
        if keep_points:
            rows[-1]["_points"] = pts
    return rows


def plot(rows, k: int, path: str) -> None:
    """Per scene: the k-NN spacing distribution of each sampler, and a random fifth of each sampler's
    points on the scene's two principal axes (the plane itself; the corridor and the ground seen
    from above), the same axes for every sampler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from infinidepth.io import atomic_path

    scenes = list(dict.fromkeys(r["scene"] for r in rows))
    samplers = list(dict.fromkeys(r["sampler"] for r in rows))
    fig, axes = plt.subplots(len(scenes), 1 + len(samplers), figsize=(4.2 * (1 + len(samplers)), 3.6 * len(scenes)))
    rng = np.random.default_rng(0)
    for i, scene in enumerate(scenes):
        first = next(r for r in rows if r["scene"] == scene)["_points"].numpy()
        centre = first.mean(0)
        axes_3d = np.linalg.svd(first - centre, full_matrices=False)[2][:2]
        for j, sampler in enumerate(samplers):
            r = next(r for r in rows if r["scene"] == scene and r["sampler"] == sampler)
            ax = axes[i, 1 + j]
            ax.set_title(f"{scene}: {sampler}", fontsize=9)
            if "error" in r:
                ax.text(0.5, 0.5, "n/a: no points\n(see the report's error)", ha="center", va="center",
                        transform=ax.transAxes)
                continue
            pts = r["_points"].numpy()
            s = knn_spacing(pts, k)
            axes[i, 0].hist(s / np.median(s), bins=np.geomspace(0.05, 20, 60), histtype="step", lw=1.5,
                            label=f"{sampler} (CV {r['knn_cv']:.2f})")
            sub = (pts[rng.random(len(pts)) < 0.2] - centre) @ axes_3d.T
            ax.scatter(sub[:, 0], sub[:, 1], s=0.3, c="k", alpha=0.4, linewidths=0)
            ax.set_aspect("equal")
            ax.set_xlabel("principal axis 1")
            ax.set_ylabel("principal axis 2")
        axes[i, 0].set_xscale("log")
        axes[i, 0].set_title(f"{scene}: {k}-NN spacing / median", fontsize=9)
        axes[i, 0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=size_arg(), default="240x320", help="HxW of the source view")
    p.add_argument("--baseline", type=float, default=0.5, help="sideways camera move for the hole measure")
    p.add_argument("--k", type=int, default=8, help="neighbours of the spacing measure")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write results here")
    p.add_argument("--plot", help="write a PNG: spacing histograms and top-down views of the points")
    args = p.parse_args(argv)
    H, W = args.size
    rows = [r for scene in standard_scenes((H, W)) for r in evaluate(scene, args.baseline, args.k, args.seed, bool(args.plot))]
    if args.plot:
        plot(rows, args.k, args.plot)
        for r in rows:
            r.pop("_points", None)
    print(f"{'scene':24s} {'sampler':22s} {'points':>8s} {'kNN CV':>8s} {'p90/p10':>8s} {'holes':>7s}")
    for r in rows:
        if "error" in r:
            print(f"{r['scene']:24s} {r['sampler']:22s} n/a: {r['error']}")
            continue
        print(f"{r['scene']:24s} {r['sampler']:22s} {r['points']:8d} {r['knn_cv']:8.3f} {r['knn_p90_p10']:8.2f} "
              f"{100 * r['hole_fraction']:6.2f}%")
    write_report(args.json, {"size": [H, W], "baseline": args.baseline, "k": args.k, "seed": args.seed, "rows": rows},
                 None if argv is None else [__file__, *argv])


if __name__ == "__main__":
    main()
