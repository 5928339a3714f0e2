"""Decoder throughput: every backend of implicit_decode against the released-style PyTorch path,
in one process, on realistic ViT-L sizes (input 768x1024).

    python benchmarks/decoder.py --device cpu --decoder official --queries 65536 --json OUT.json
    python benchmarks/decoder.py --device cuda --decoder official --queries 33177600   # the 8K dense grid

Baseline: the decoder run the way the released code runs it, in chunks of 10,000 queries
(grid_sample per map, concatenate, MLP) -- our ``torch`` backend with ``chunk=10000``, which
matches the released implementation to the bit (see the README's parity section). The fused
backends fold the decoder into the maps once per image; that cost is reported separately
(``fold_ms``) and the throughput is the steady state of decoding an image's queries.
``max_rel_err``: max |error| / std of the output, against the reference in float64 on the first
4,096 queries, for every row including the baseline.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from common import device_name, sync, timeit, write_report

from infinidepth.ops import ConcatDecoder, HierarchicalDecoder, available_backends, grid_coords, implicit_decode

BASELINE_CHUNK = 10_000


def linear(cin, cout, device):
    return torch.randn(cout, cin, device=device) / math.sqrt(cin), torch.randn(cout, device=device) * 0.02


def make_problem(decoder: str, device):
    """Feature maps and decoder weights of the ViT-L models for a 768x1024 input."""
    g = torch.Generator(device="cpu").manual_seed(0)
    torch.manual_seed(0)
    if decoder == "official":
        maps = [torch.randn(1, 1024, 48, 64, generator=g), torch.randn(1, 128, 192, 256, generator=g)]
        dims = [1152, 1024, 256, 32, 1]
        dec = ConcatDecoder([linear(a, b, device) for a, b in zip(dims[:-1], dims[1:])])
    else:
        chans = [256, 512, 1024]
        maps = [torch.randn(1, c, 768 // s, 1024 // s, generator=g) for c, s in zip(chans, (4, 8, 16))]
        dec = HierarchicalDecoder(
            gates=[torch.randn(c, device=device) for c in chans[1:]],
            laterals=[linear(a, b, device) for a, b in zip(chans[:-1], chans[1:])],
            ffns=[(linear(c, 4 * c, device), linear(4 * c, c, device)) for c in chans[1:]],
            head=[linear(1024, 256, device), linear(256, 256, device), linear(256, 1, device)],
        )
    return [m.to(device) for m in maps], dec


def _to_double(v):
    if isinstance(v, torch.Tensor):
        return v.double()
    if isinstance(v, (ConcatDecoder, HierarchicalDecoder)):
        return type(v)(**{k: _to_double(x) for k, x in vars(v).items()})
    return type(v)(_to_double(x) for x in v)


def query_grid(n: int, device):
    """The first n queries of a dense 3:4 output grid (exactly 4320x7680 for the 8K case)."""
    if n == 4320 * 7680:
        h, w = 4320, 7680
    else:
        w = math.ceil(math.sqrt(n * 4 / 3))
        h = math.ceil(n / w)
    return grid_coords(h, w, device=device)[:, :n].contiguous()





def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--decoder", choices=["official", "paper"], default="official")
    p.add_argument("--queries", type=int, default=65536)
    p.add_argument("--backends", help="comma-separated subset (default: all available)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    maps, dec = make_problem(args.decoder, device)
    coords = query_grid(args.queries, device)
    if args.decoder == "official":
        coords = coords.clamp(-1 + 1e-6, 1 - 1e-6)  # as the released decoder does

    with torch.no_grad():
        # Accuracy oracle: the reference in float64 on the first 4096 queries (the fp32 baseline has
        # rounding error of its own, reported in its row).
        probe = coords[:, :4096]
        want = implicit_decode([m.double() for m in maps], probe.double(), _to_double(dec), backend="torch")

        def err(out):
            return ((out[:, : probe.shape[1]].double() - want).abs().max() / want.std()).item()

        base = lambda: implicit_decode(maps, coords, dec, backend="torch", chunk=BASELINE_CHUNK)  # noqa: E731
        base_t = timeit(base, device)
        results = [{"backend": "released-style torch (baseline)", "dtype": "fp32", "queries_per_s": args.queries / base_t,
                    "speedup_vs_baseline": 1.0, "max_rel_err": err(base()), "fold_ms": 0.0}]
        backends = args.backends.split(",") if args.backends else [b for b in available_backends(device) if b != "torch"]
        runs = [(b, "fp32") for b in backends]
        if device.type == "cuda":  # tensor cores: bf16 operands, fp32 accumulation
            runs += [(b, "bf16") for b in backends if b in ("cuda", "triton")]
        for backend, precision in runs:
            t0 = time.perf_counter()
            cache: dict = {}
            kw = dict(backend=backend, cache=cache, precision=precision)
            got = implicit_decode(maps, coords[:, :1], dec, **kw)  # folds once
            sync(device)
            fold_ms = (time.perf_counter() - t0) * 1e3
            t = timeit(lambda: implicit_decode(maps, coords, dec, **kw), device)
            got = implicit_decode(maps, coords, dec, **kw)
            results.append({
                "backend": backend,
                "dtype": precision,
                "queries_per_s": args.queries / t,
                "speedup_vs_baseline": base_t / t,
                "max_rel_err": err(got),
                "fold_ms": fold_ms,
            })
    report = {"device": device_name(device), "decoder": args.decoder, "queries": args.queries, "results": results}
    print(f"{args.decoder} decoder, {args.queries} queries on {report['device']}")
    print(f"{'backend':34s} {'dtype':8s} {'queries/s':>12s} {'speedup':>8s} {'max rel err':>12s} {'fold ms':>8s}")
    for r in results:
        print(f"{r['backend']:34s} {r['dtype']:8s} {r['queries_per_s']:12.4g} {r['speedup_vs_baseline']:7.2f}x "
              f"{r['max_rel_err']:12.2e} {r['fold_ms']:8.1f}")
    write_report(args.json, report)
    return report


if __name__ == "__main__":
    main()
