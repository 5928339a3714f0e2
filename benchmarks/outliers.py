"""The flying-point filter on real per-pixel clouds: the exact k-NN kernel (csrc/outliers_cpu.cpp, what
``infinidepth.sampling.outliers.statistical_inliers`` runs) against the scipy cKDTree version it replaced
(kept here as the reference), in the same run, on the bundled demo model's depth of the demo picture.

    python benchmarks/outliers.py --sizes 4k,8k --threads 2 --json benchmarks/results/outliers_cpu.json

Per size: the depth is predicted once and back-projected the way ``infinidepth predict --ply`` does (one
point per output pixel); then the two filters run in turn, alternating, ``--repeats`` times each, and the
fastest run of each is reported (the machine may be shared: the minimum is the least disturbed run).
Checked every time: the masks agree except for points whose score is within 1e-9 (relative) of the
threshold, and the new scores equal cKDTree's; and once, ``--brute`` random points' scores against every
distance of the cloud computed in numpy.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from common import device_name, positive_int, write_report

from infinidepth.sampling.outliers import NEIGHBOURS, STD_RATIO, ckdtree_mean_distances, mean_neighbour_distances


def mask_of(score: np.ndarray) -> tuple[np.ndarray, float]:
    positive = score[score > 0]
    threshold = positive.mean() + STD_RATIO * positive.std(ddof=1)
    return score <= threshold, threshold


def demo_cloud(size: tuple[int, int]) -> np.ndarray:
    """The demo picture's per-pixel cloud at ``size``, as ``predict IMAGE --output-size ... --ply`` makes it."""
    from importlib.resources import files

    from infinidepth.cli import network_input_size, open_model, pixel_points, read_image, resize_rgb

    rgb = read_image(str(files("infinidepth") / "assets" / "demo.png"))
    H0, W0 = rgb.shape[:2]
    model = open_model(None, torch.device("cpu"))
    input_size = network_input_size(None, H0, W0, model.input_size, model.patch_size)
    image = torch.from_numpy(resize_rgb(rgb, input_size)).permute(2, 0, 1)[None].float().div(255)
    with torch.no_grad():
        depth = model.predict(image, output_size=size)[0, 0].cpu().numpy()
    f = float(max(H0, W0))
    K = torch.tensor([[f, 0, W0 / 2], [0, f, H0 / 2], [0, 0, 1]], dtype=torch.float64)
    return pixel_points(depth, size, (0, 0, *size), K, (H0, W0))


def brute_check(p: np.ndarray, score: np.ndarray, n: int, k: int, seed: int = 0) -> float:
    """Largest relative error of ``n`` random points' scores against all their distances."""
    worst = 0.0
    for i in np.random.default_rng(seed).choice(len(p), n, replace=False):
        d = np.sqrt(((p - p[i]) ** 2).sum(1))
        want = np.partition(d, k - 1)[:k].mean()
        worst = max(worst, abs(score[i] - want) / max(want, 1e-300))
    return worst


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    except OSError:
        return "unknown"


def sizes_arg(text: str) -> list[tuple[str, tuple[int, int]]]:
    from infinidepth.cli import parse_sizes

    try:
        return parse_sizes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--sizes: ")) from None


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=sizes_arg, default="4k,8k",
                    help="comma list of 1k, 2k, 4k, 8k, 16k or HxW (default: 4k,8k)")
    ap.add_argument("--threads", type=positive_int, default=2, help="threads of both filters (default: 2)")
    ap.add_argument("--repeats", type=positive_int, default=2, help="runs of each filter per size (default: 2)")
    ap.add_argument("--brute", type=int, default=16, help="points checked by brute force per size (default: 16)")
    ap.add_argument("--json", help="write the report here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name, size in args.sizes:
        t0 = time.perf_counter()
        pts = demo_cloud(size)
        p = pts.astype(np.float64)
        print(f"{name} {size[0]}x{size[1]}: {len(p):,} points (depth predicted and back-projected in "
              f"{time.perf_counter() - t0:.1f} s)", flush=True)
        k = min(NEIGHBOURS, len(p))
        old_s, new_s = [], []
        for r in range(args.repeats):   # interleaved, so that a disturbance hits both alike
            t = time.perf_counter()
            ref = ckdtree_mean_distances(p, k, workers=args.threads)
            old_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            score = mean_neighbour_distances(p, k)
            new_s.append(time.perf_counter() - t)
            print(f"  run {r + 1}: cKDTree {old_s[-1]:.2f} s, kernel {new_s[-1]:.2f} s", flush=True)
        score_err = float(np.max(np.abs(score - ref) / np.maximum(ref, 1e-300)))
        keep_ref, threshold = mask_of(ref)
        keep, _ = mask_of(score)
        close = np.abs(ref - threshold) <= 1e-9 * threshold
        differ = int((keep != keep_ref).sum())
        assert (keep == keep_ref)[~close].all(), "the masks differ away from the threshold"
        brute = brute_check(p, score, args.brute, k) if args.brute > 0 else None
        old, new = min(old_s), min(new_s)
        row = {"size": name, "points": len(p), "ckdtree_s": round(old, 3), "kernel_s": round(new, 3),
               "ckdtree_points_per_s": round(len(p) / old), "kernel_points_per_s": round(len(p) / new),
               "speedup": round(old / new, 2), "ckdtree_runs_s": [round(x, 3) for x in old_s],
               "kernel_runs_s": [round(x, 3) for x in new_s], "max_rel_score_diff_vs_ckdtree": score_err,
               "mask_differences": differ, "points_within_1e-9_of_threshold": int(close.sum()),
               "removed": int((~keep).sum()), "brute_force_points": args.brute, "max_rel_err_vs_brute_force": brute}
        rows.append(row)
        print(f"  cKDTree {old:.2f} s ({len(p) / old / 1e6:.2f} M points/s), kernel {new:.2f} s "
              f"({len(p) / new / 1e6:.2f} M points/s): {old / new:.2f}x; scores within {score_err:.1e} of cKDTree's, "
              f"{differ} mask differences, brute force on {args.brute} points within {brute}", flush=True)
    write_report(args.json, {"benchmark": "outliers", "device": device_name(torch.device("cpu")), "cpu": cpu_model(),
                             "threads": args.threads, "neighbours": NEIGHBOURS, "std_ratio": STD_RATIO,
                             "repeats": args.repeats, "rows": rows})


if __name__ == "__main__":
    main()
