"""Throughput of the surface-area sampler, every backend, against a plain-PyTorch reproduction of
the released triangle-area sampler, in one run.

    python benchmarks/sampler.py --device cpu --size 768x1024 --points 2000000 --json OUT.json

The depth field is the analytic corridor scene (exact depth and normals) at --size. Timed per
backend: the whole sampler from depth and normals (surface_area_sample: area weights, quantisation,
scan, search, jitter), also as a first call (which also lays out the grid's Hilbert order, cached
after), and the placement kernel alone (inverse_cdf_sample on ready weights). The triangle sampler
runs its release-default deterministic mode on the same depth. Every backend's cells and
coordinates are checked against the torch reference (they must be identical).
"""

from __future__ import annotations

import argparse

import torch

from common import cli_device, device_name, positive_int, size_arg, timeit, write_report

from infinidepth.ops import available_backends, grid_coords
from infinidepth.ops.inverse_cdf import inverse_cdf_sample
from infinidepth.sampling import surface_area_sample, surface_area_weights, surface_normals, triangle_area_sample
from infinidepth.sampling.scenes import standard_scenes
from infinidepth.sampling.surface import hilbert_layout


def make_problem(size, device):
    scene = standard_scenes(size)[1]  # the corridor
    H, W = size
    depth, grad = scene.depth_and_grad(grid_coords(H, W).double())
    depth = depth.reshape(1, 1, H, W)
    normals = surface_normals(depth, grad.reshape(1, H, W, 2).permute(0, 3, 1, 2), scene.intrinsics)
    return depth.float().to(device), normals.float().to(device), scene.intrinsics


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=size_arg(), default="768x1024", help="HxW of the depth map")
    p.add_argument("--points", type=positive_int, default=2_000_000)
    p.add_argument("--min-time", type=float, default=2.0, help="seconds of timing per row")
    p.add_argument("--json", help="write results here")
    args = p.parse_args(argv)
    device = cli_device(args.device, p.prog)
    H, W = args.size
    n = args.points
    depth, normals, K = make_problem((H, W), device)
    weights = surface_area_weights(depth, normals, K)

    def time(fn):
        return timeit(fn, device, min_time=args.min_time, max_iters=10)

    triangle = time(lambda: triangle_area_sample(depth, K, n))
    want = inverse_cdf_sample(weights, n, seed=0, backend="torch")
    rows = [{"sampler": "triangle (released, plain PyTorch)", "backend": "torch", "seconds": triangle,
             "points_per_s": n / triangle, "speedup_vs_triangle": 1.0}]
    reference = None
    for backend in available_backends(device):
        whole = time(lambda: surface_area_sample(depth, normals, K, n, seed=0, backend=backend))

        def first_call():   # a one-off call (the CLI's) also lays out the grid's Hilbert order
            hilbert_layout.cache_clear()
            surface_area_sample(depth, normals, K, n, seed=0, backend=backend)

        first = time(first_call)
        kernel = time(lambda: inverse_cdf_sample(weights, n, seed=0, backend=backend))
        reference = reference or {"whole": whole, "kernel": kernel}
        coords, cells = inverse_cdf_sample(weights, n, seed=0, backend=backend)
        same = torch.equal(cells.cpu(), want[1].cpu()) and torch.equal(coords.cpu(), want[0].cpu())
        rows.append({"sampler": "surface area (ours)", "backend": backend, "seconds": whole, "first_call_seconds": first,
                     "points_per_s": n / whole,
                     "speedup_vs_triangle": triangle / whole, "speedup_vs_torch": reference["whole"] / whole,
                     "kernel_seconds": kernel, "kernel_speedup_vs_torch": reference["kernel"] / kernel,
                     "identical_to_torch": same})
    report = {"device": device_name(device), "op": "surface_area_sample", "size": [H, W], "points": n,
              "baseline": "triangle_area_sample (release-default deterministic mode)", "results": rows}
    print(f"{'sampler':36s} {'backend':8s} {'seconds':>9s} {'first s':>8s} {'points/s':>10s} {'vs triangle':>12s} "
          f"{'kernel s':>9s} {'kernel vs torch':>16s} {'identical':>10s}   [{report['device']}]")
    for r in rows:
        extra = (f"{r['kernel_seconds']:9.4f} {r['kernel_speedup_vs_torch']:15.2f}x {str(r['identical_to_torch']):>10s}"
                 if "kernel_seconds" in r else "")
        first = f"{r['first_call_seconds']:8.4f}" if "first_call_seconds" in r else " " * 8
        print(f"{r['sampler']:36s} {r['backend']:8s} {r['seconds']:9.4f} {first} {r['points_per_s']:10.3g} "
              f"{r['speedup_vs_triangle']:11.2f}x {extra}")
    write_report(args.json, report, None if argv is None else [__file__, *argv])
    return report


if __name__ == "__main__":
    main()
