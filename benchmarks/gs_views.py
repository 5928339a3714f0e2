"""Novel views from splatted points: surface-area (uniform) sampling vs pixel-aligned points, at
equal count, on procedural scenes with exact geometry.

    python benchmarks/gs_views.py --scenes 12 --size 96x128 --json benchmarks/results/gs_views.json \
        --picture benchmarks/results/gs_views.png

For each held-out scene the source view's exact depth and normals (the procedural renderer) give:

- ``pixel``: one point per valid pixel centre (what a pixel-aligned Gaussian head places);
- ``uniform``: the same number of points placed by the surface-area sampler (sub-pixel positions,
  their depth and colour read from a 4x render of the same view, nearest sample: never blended).

Both become splats by the same rule (``splats_from_points``) and are rendered into cameras moved
sideways by 5% (small) and 25% (large) of the median scene depth, then compared with the true render
of those views on its valid pixels: PSNR, SSIM and the hole fraction (accumulated opacity < 0.5).
This isolates where the points are; no learned Gaussian head is involved.

``--gs-head DIR/gs_head.pt`` adds two rows per shift with the head's depth model: its surface-area
points (aligned to the true depth, as in training) as plain splats (``model``) and through the
trained head (``model+head``), at the same count: what the learned head adds; and both again with
four times the points (``model x4``, ``model+head x4``): a head trained at one count must hold at others.

``--lpips FILE`` adds LPIPS to every row (lower is better; the network weights as for
``infinidepth train-gs --lpips``: torchvision's VGG16 or AlexNet file, or a saved ``lpips.LPIPS``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import device_name, positive_int, size_arg, write_report  # noqa: E402

from infinidepth.data.procedural import generate_scene, render  # noqa: E402
from infinidepth.gs import render_torch, splats_from_points  # noqa: E402
from infinidepth.gs.metrics import hole_fraction, load_lpips, lpips_distance, psnr, ssim  # noqa: E402
from infinidepth.ops import grid_coords  # noqa: E402
from infinidepth.sampling import backproject, surface_area_sample  # noqa: E402

SHIFTS = {"small": 0.05, "large": 0.25}
DENSE = 4   # the head's rows again with this many times the points: a head must not depend on the count


def nearest(values: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """``values [H, W, C]`` at normalised ``coords [N, 2]``, nearest pixel."""
    H, W = values.shape[:2]
    i = ((coords[:, 0] + 1) / 2 * H).floor().long().clamp(0, H - 1)
    j = ((coords[:, 1] + 1) / 2 * W).floor().long().clamp(0, W - 1)
    return values[i, j]


def points_of(kind: str, src, fine, K, size, seed):
    H, W = size
    if kind == "pixel":
        coords = grid_coords(H, W)[0]
        keep = src.valid.reshape(-1)
        coords, depth, rgb = coords[keep], src.depth.reshape(-1)[keep], src.rgb.reshape(-1, 3)[keep]
        return coords, depth, rgb
    n = int(src.valid.sum())
    coords = surface_area_sample(src.depth[None, None], src.normals.permute(2, 0, 1)[None], K, n, seed=seed)[0]
    depth = nearest(fine.depth[..., None], coords)[:, 0]
    rgb = nearest(fine.rgb, coords)
    keep = depth > 0
    return coords[keep], depth[keep], rgb[keep]


def scores(out, truth, perceptual=None) -> dict:
    """PSNR, SSIM, hole fraction (and LPIPS when a network is given) of a render on the true view's valid pixels."""
    rgb, mask = out["rgb"].clamp(0, 1), truth.valid
    row = {"psnr": psnr(rgb, truth.rgb, mask), "ssim": ssim(rgb, truth.rgb, mask),
           "hole_fraction": hole_fraction(out["alpha"], mask)}
    if perceptual is not None:
        with torch.no_grad():
            row["lpips"] = float(lpips_distance(perceptual, rgb, truth.rgb, mask))
    return row


def one_scene(seed: int, size, head=None, depth_model=None, perceptual=None):
    H, W = size
    scene = generate_scene(seed)
    src = render(scene, size)
    fine = render(scene, (4 * H, 4 * W))
    K = src.intrinsics.float()
    median = float(src.depth[src.valid].median())
    c2w = scene.cameras[0]
    rows, views = [], {}
    for shift, frac in SHIFTS.items():
        T = c2w.copy()
        T[:3, 3] = c2w[:3, 3] + c2w[:3, :3] @ np.array([frac * median, 0.0, 0.0])
        scene.cameras.append(T)
        truth = render(scene, size, view=len(scene.cameras) - 1)
        w2c = torch.from_numpy(np.linalg.inv(T) @ c2w).float()      # source camera frame -> target camera
        for kind in ("pixel", "uniform"):
            coords, depth, rgb = points_of(kind, src, fine, K, size, seed)
            pts = backproject(depth[None], coords[None], K[None], size)[0]
            out = render_torch(splats_from_points(pts, rgb), w2c, K, size)
            rows.append({"seed": seed, "shift": shift, "sampler": kind, "points": len(pts),
                         **scores(out, truth, perceptual)})
            views[(shift, kind)] = out["rgb"].clamp(0, 1)
        if head is not None:
            from infinidepth.gs.train import head_inputs

            image = src.rgb.permute(2, 0, 1)[None]
            for times, suffix in ((1, ""), (DENSE, f" x{DENSE}")):
                n = times * int(src.valid.sum())
                p_in, c_in, feats = head_inputs(depth_model, image, K, n, seed, src.depth)
                with torch.no_grad():
                    for kind, g in (("model", splats_from_points(p_in, c_in)),
                                    ("model+head", head(p_in, c_in, feats))):
                        out = render_torch(g, w2c, K, size)
                        rows.append({"seed": seed, "shift": shift, "sampler": kind + suffix, "points": n,
                                     **scores(out, truth, perceptual)})
        views[(shift, "truth")] = truth.rgb
    return rows, views


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=positive_int, default=12)
    ap.add_argument("--size", type=size_arg(), default="96x128", help="HxW of the source and target views")
    ap.add_argument("--seed", type=int, default=300_000, help="first scene seed (held out from training seeds)")
    ap.add_argument("--gs-head", help="a head from infinidepth train-gs: adds model / model+head rows")
    ap.add_argument("--lpips", help="LPIPS network weights (as for infinidepth train-gs --lpips): adds an LPIPS column")
    ap.add_argument("--json")
    ap.add_argument("--picture")
    args = ap.parse_args()
    size = args.size
    head = depth_model = None
    if args.gs_head:
        from infinidepth.checkpoint import load_model
        from infinidepth.gs.train import load_gs_head

        head, name = load_gs_head(args.gs_head)
        if name is None:
            ap.error("--gs-head: the released GS head reads a released InfiniDepth model's tokens; this benchmark "
                     "scores heads trained by infinidepth train-gs on the procedural scenes")
        depth_model = load_model(name)
    perceptual = load_lpips(args.lpips) if args.lpips else None
    metrics = ("psnr", "ssim", "hole_fraction") + (("lpips",) if perceptual is not None else ())
    rows, first_views = [], None
    for k in range(args.scenes):
        r, views = one_scene(args.seed + k, size, head, depth_model, perceptual)
        rows += r
        first_views = first_views or views
    summary = {}
    print(f"{'shift':>6} {'sampler':>15} {'PSNR':>7} {'SSIM':>6} {'holes':>7}" + (f" {'LPIPS':>6}" if perceptual else ""))
    kinds = ("pixel", "uniform") + (("model", "model+head", f"model x{DENSE}", f"model+head x{DENSE}") if head is not None else ())
    for shift in SHIFTS:
        for kind in kinds:
            sel = [r for r in rows if r["shift"] == shift and r["sampler"] == kind]
            m = {key: float(np.mean([r[key] for r in sel])) for key in metrics}
            summary[f"{shift}/{kind}"] = m
            print(f"{shift:>6} {kind:>15} {m['psnr']:7.2f} {m['ssim']:6.3f} {m['hole_fraction']:7.4f}"
                  + (f" {m['lpips']:6.3f}" if perceptual else ""))
    write_report(args.json, {"benchmark": "novel views from splatted points", "device": device_name(torch.device("cpu")),
                             "size": list(size), "shifts_of_median_depth": SHIFTS, "scenes": args.scenes,
                             "summary": summary, "rows": rows})
    if args.picture:
        from infinidepth.io import write_png

        strip = [torch.cat([first_views[(s, "truth")], first_views[(s, "pixel")], first_views[(s, "uniform")]], 1)
                 for s in SHIFTS]
        write_png(args.picture, (torch.cat(strip, 0).numpy() * 255).round().astype(np.uint8))


if __name__ == "__main__":
    main()
