"""Throughput of the bilinear gather (the first stage of every implicit decoder), every backend
against the grid_sample reference, in one process.

    python benchmarks/gather.py --device cpu --channels 1024 --map 48x64 --queries 65536 --json OUT.json

Defaults are the official decoder's ViT-L token map for a 768x1024 input (1024 channels, 48x64).
"""

from __future__ import annotations

import argparse

import torch

from common import cli_device, device_name, positive_int, size_arg, timeit, write_report

from infinidepth.ops import available_backends, bilinear_gather, bilinear_gather_reference




def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--channels", type=positive_int, default=1024)
    p.add_argument("--map", type=size_arg(), default="48x64", help="feature map HxW")
    p.add_argument("--queries", type=positive_int, default=65536)
    p.add_argument("--batch", type=positive_int, default=1)
    p.add_argument("--json", help="write results here")
    args = p.parse_args(argv)
    device = cli_device(args.device, p.prog)
    h, w = args.map
    torch.manual_seed(0)
    feat = torch.randn(args.batch, args.channels, h, w, device=device)
    coords = torch.rand(args.batch, args.queries, 2, device=device) * 2 - 1
    want = bilinear_gather_reference(feat, coords)
    base = timeit(lambda: bilinear_gather_reference(feat, coords), device)
    results = []
    for backend in available_backends(device):
        t = base if backend == "torch" else timeit(lambda: bilinear_gather(feat, coords, backend=backend), device)
        got = bilinear_gather(feat, coords, backend=backend)
        results.append({
            "backend": backend,
            "dtype": "float32",
            "queries_per_s": args.batch * args.queries / t,
            "speedup_vs_baseline": base / t,
            "max_rel_err": ((got - want).abs().max() / want.std()).item(),
        })
    report = {"device": device_name(device), "op": "bilinear_gather", "channels": args.channels, "map": [h, w],
              "queries": args.queries, "batch": args.batch, "baseline": "torch grid_sample", "results": results}
    print(f"{'backend':8s} {'queries/s':>14s} {'vs grid_sample':>15s} {'max rel err':>12s}   [{report['device']}]")
    for r in results:
        print(f"{r['backend']:8s} {r['queries_per_s']:14.4g} {r['speedup_vs_baseline']:14.2f}x {r['max_rel_err']:12.2e}")
    write_report(args.json, report, None if argv is None else [__file__, *argv])
    return report


if __name__ == "__main__":
    main()
