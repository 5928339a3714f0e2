"""The best score any grid head can reach: what a perfect depth map on the network input's grid,
upsampled bilinearly (as the grid baseline does), scores against the ground truth.

    python benchmarks/grid_ceiling.py data/demo-e192/val --input 48x64,96x128,192x256 --json benchmarks/results/grid_ceiling.json

For each held-out scene the ground truth is reduced to the input grid (the mean of log-depth over
each cell: the grid a perfect grid head would predict, up to how it weighs an edge), upsampled back
bilinearly and scored like a model in ``infinidepth eval`` (same metrics, same high-frequency masks,
no alignment: it is already in the ground truth's scale). An implicit decoder queried at the ground
truth's pixels is not bound by this grid; a perfect one scores AbsRel 0 and delta 1. So the gap
between this ceiling and zero is all an implicit head can gain over a grid head from its
representation, on the full image and on the high-frequency pixels; whatever error a trained model
has beyond the ceiling comes from elsewhere (mostly the encoder).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import device_name, score_line, write_report  # noqa: E402

from infinidepth.eval import Procedural  # noqa: E402
from infinidepth.eval.hf_mask import high_frequency_mask  # noqa: E402
from infinidepth.eval.metrics import depth_metrics  # noqa: E402


def grid_ceiling_depth(depth: np.ndarray, valid: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """``depth`` [H, W] reduced to ``grid`` (the mean log-depth of each cell's valid pixels) and
    upsampled back to [H, W] bilinearly (``align_corners=False``, as the grid baseline reads its grid)."""
    H, W = depth.shape
    if H % grid[0] or W % grid[1]:
        raise ValueError(f"the ground truth {H}x{W} is not a whole multiple of the grid {grid[0]}x{grid[1]}")
    log_depth = torch.from_numpy(np.where(valid, np.log(np.clip(depth, 1e-6, None)), 0.0))[None, None].float()
    weight = torch.from_numpy(valid.astype(np.float32))[None, None]
    cell = (H // grid[0], W // grid[1])
    total, count = F.avg_pool2d(log_depth, cell), F.avg_pool2d(weight, cell)
    small = torch.where(count > 0, total / count.clamp_min(1e-12), 0.0)
    # Cells with no valid pixel (sky) are never scored, but bilinear upsampling mixes them into their
    # scored neighbours: a perfect grid head would continue the surface there, so fill each from the
    # mean of its filled neighbours, ring by ring.
    filled = count > 0
    if not filled.any():
        raise ValueError("the ground truth has no valid pixel")
    while not filled.all():
        f = filled.float()
        near = F.avg_pool2d(F.pad(small * f, (1, 1, 1, 1)), 3, 1) / F.avg_pool2d(F.pad(f, (1, 1, 1, 1)), 3, 1).clamp_min(1e-12)
        grow = ~filled & (F.max_pool2d(f, 3, 1, 1) > 0)
        small, filled = torch.where(grow, near, small), filled | grow
    return F.interpolate(small, size=(H, W), mode="bilinear", align_corners=False)[0, 0].exp().numpy()


def ceiling_scores(dataset, grids: list[tuple[int, int]]) -> dict:
    """Per grid ("HxW") and region (full, hf): the mean of every metric over the dataset's images."""
    rows = {f"{g[0]}x{g[1]}": [] for g in grids}
    for i in range(len(dataset)):
        f = dataset.frame(i)
        gt, valid = f["depth"].numpy(), f["valid"].numpy()
        hf = high_frequency_mask(gt, valid, seed=0)   # the masks `infinidepth eval` draws (its default seed)
        for g in grids:
            pred = grid_ceiling_depth(gt, valid, g)
            rows[f"{g[0]}x{g[1]}"].append({"full": depth_metrics(pred, gt, valid), "hf": depth_metrics(pred, gt, valid & hf)})
    return {key: {region: {m: float(np.mean([r[region][m] for r in per_image])) for m in per_image[0][region]}
                  for region in ("full", "hf")}
            for key, per_image in rows.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="a rendered procedural set (`infinidepth data render`, or demo_model.py's val/)")
    ap.add_argument("--input", default="96x128", help="network input grids HxW, comma-separated (e.g. 96x128,192x256)")
    ap.add_argument("--json")
    args = ap.parse_args()
    try:
        grids = [tuple(int(v) for v in g.lower().split("x")) for g in args.input.split(",")]
        if any(len(g) != 2 or min(g) <= 0 for g in grids):
            raise ValueError
    except ValueError:
        ap.error(f"--input takes HxW grids, comma-separated (e.g. 96x128), got {args.input!r}")
    try:
        val = Procedural(args.data)
        summary = ceiling_scores(val, grids)
    except ValueError as e:   # no such set (InputError), or a grid that does not divide its ground truth
        ap.error(str(e))
    shape = val.frame(0)["depth"].shape
    for key, s in summary.items():
        print(f"grid {key} -> {shape[0]}x{shape[1]}: {score_line(s)}")
    write_report(args.json, {
        "benchmark": "grid-head ceiling: ground truth on the input grid, upsampled bilinearly",
        "device": device_name(torch.device("cpu")), "data": args.data, "images": len(val),
        "evaluated_at": list(shape), "reduction": "mean of log-depth per cell", "hf_mask_seed": 0,
        "grids": summary,
    })


if __name__ == "__main__":
    main()
