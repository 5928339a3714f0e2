"""Decoder throughput: every backend of implicit_decode against the released-style PyTorch path,
in one process, on realistic ViT-L sizes (input 768x1024).

    python benchmarks/decoder.py --device cpu --decoder official --queries 65536 --json OUT.json
    python benchmarks/decoder.py --device cuda --decoder official --queries 33177600   # the 8K dense grid
    python benchmarks/decoder.py --device cpu --decoder official --with-grad --json OUT.json

Baseline: the decoder run the way the released code runs it, in chunks of 10,000 queries
(grid_sample per map, concatenate, MLP) -- our ``torch`` backend with ``chunk=10000``, which
matches the released implementation to the bit (see the README's parity section). The fused
backends fold the decoder into the maps once per image; that cost is reported separately
(``fold_ms``) and the throughput is the steady state of decoding an image's queries.
``max_rel_err``: max |error| / std of the output, against the reference in float64 on the first
4,096 queries, for every row including the baseline. ``speedup_vs_baseline``: the baseline's time
/ the row's (above 1: faster than the released-style path); times are medians of single calls after
a warm-up call. Rows: the baseline, then every backend (``torch``: our plain-PyTorch reference in
chunks of 65,536) in fp32, then in bf16 where the device has it. ``fold_ms`` is timed after a first
fold with a throwaway cache, so it leaves out compiling the kernels.

``--cuda-rows 32,16``: also rows of the ``cuda`` backend with its blocks capped at that many
queries (``INFINIDEPTH_CUDA_MAX_ROWS``, read by the extension at every launch), fp32 and bf16, in
the same process: one baseline and one set of maps for every block size.

``--with-grad``: the value and its derivative with respect to (y, x) (what the surface-area sampler
needs). Baseline: autograd through the same chunked PyTorch path, as the released code gets normals;
the fused backends carry forward-mode tangents. Errors are taken on 4,096 random queries (on a
dense grid many sit exactly on a feature-cell border); ``grad_rel_err_p999`` is the 99.9th
percentile of the derivative's error / its std: where a ReLU's input is within rounding of 0 the
derivative jumps, and float32 and float64 may land on different sides of the kink for a few queries.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import time

import torch

from common import cli_device, device_name, positive_int, sync, timeit, write_report

from infinidepth.ops import ConcatDecoder, HierarchicalDecoder, available_backends, grid_coords, implicit_decode
from infinidepth.ops.gather import cpu_supports_bf16

BASELINE_CHUNK = 10_000
TORCH_CHUNK = 65_536  # queries in flight on the plain-PyTorch rows (as model.predict runs them)
FOLDED_CHUNK = 262_144


def folded_rows(maps, dec, coords, probe, want, base_t, device) -> list[dict]:
    """The folded program run by plain PyTorch ops (run_folded_reference: grid_sample gathers on the
    folded maps, cuBLAS/MKL matrix products): an experiment, not a backend. On the H100 the plain
    PyTorch path beat the CUDA kernel; folding cuts its multiply-adds 5x (official) -- does that
    make it the fastest path?"""
    from infinidepth.ops.fold import fold_decoder, run_folded_reference

    t0 = time.perf_counter()
    folded = fold_decoder([m.float() for m in maps], dec)
    sync(device)
    fold_ms = (time.perf_counter() - t0) * 1e3
    rows = []
    for precision in ("fp32", "bf16") if device.type == "cuda" else ("fp32",):
        low = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()

        def run(c):
            with low:
                return torch.cat([run_folded_reference(folded, c[:, i:i + FOLDED_CHUNK]).float()
                                  for i in range(0, c.shape[1], FOLDED_CHUNK)], dim=1)

        t = timeit(lambda: run(coords), device)
        rows.append({"backend": "folded program in plain PyTorch", "dtype": precision, "queries_per_s": coords.shape[1] / t,
                     "speedup_vs_baseline": base_t / t,
                     "max_rel_err": ((run(probe).double() - want).abs().max() / want.std()).item(), "fold_ms": fold_ms})
    return rows


def shuffled_rows(maps, dec, coords, want, base_t, device) -> list[dict]:
    """The Triton decoder on the same queries in random order. On a dense grid finer than the maps,
    a block of neighbouring queries blends one window of map cells loaded once (kernels/fused_decode.py,
    ``_gather``); shuffled, every query reads its own 4 taps. The ratio of the two rows is what the
    window saves."""
    perm = torch.randperm(coords.shape[1], generator=torch.Generator().manual_seed(0)).to(device)
    shuffled = coords[:, perm].contiguous()
    rows = []
    for precision in ("fp32", "bf16"):
        kw = dict(backend="triton", cache={}, precision=precision)
        implicit_decode(maps, shuffled[:, :1], dec, **kw)  # folds once
        t = timeit(lambda: implicit_decode(maps, shuffled, dec, **kw), device)
        out = torch.empty_like(coords[..., 0])
        out[:, perm] = implicit_decode(maps, shuffled, dec, **kw)
        value = out[:, : want.shape[1]].double()
        rows.append({"backend": "triton, queries in random order", "dtype": precision, "queries_per_s": coords.shape[1] / t,
                     "speedup_vs_baseline": base_t / t,
                     "max_rel_err": ((value - want).abs().max() / want.std()).item(), "fold_ms": 0.0})
    return rows


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


def _row_caps(text: str) -> list[int]:
    caps = [int(v) for v in text.split(",") if v.strip()]
    if not caps or any(c not in (16, 32, 64) for c in caps):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of 16, 32 or 64, got {text!r}")
    return caps


@contextlib.contextmanager
def _cuda_max_rows(rows: int | None):
    """INFINIDEPTH_CUDA_MAX_ROWS set to ``rows`` inside (None: left as it is), restored after."""
    if rows is None:
        yield
        return
    before = os.environ.get("INFINIDEPTH_CUDA_MAX_ROWS")
    os.environ["INFINIDEPTH_CUDA_MAX_ROWS"] = str(rows)
    try:
        yield
    finally:
        if before is None:
            del os.environ["INFINIDEPTH_CUDA_MAX_ROWS"]
        else:
            os.environ["INFINIDEPTH_CUDA_MAX_ROWS"] = before


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--decoder", choices=["official", "paper"], default="official")
    p.add_argument("--queries", type=positive_int, default=65536)
    p.add_argument("--backends", help="comma-separated subset (default: every available one, torch included)")
    p.add_argument("--with-grad", action="store_true", help="decode the derivative too (implicit_decode(with_grad=True))")
    p.add_argument("--cuda-rows", type=_row_caps, default=[],
                   help="comma-separated caps (16, 32 or 64) on the cuda backend's queries per block: rows of each, fp32 and bf16")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    grad = args.with_grad
    device = cli_device(args.device, p.prog)
    if args.cuda_rows and (grad or "cuda" not in available_backends(device)):
        p.error("--cuda-rows times the cuda backend's value kernel: it needs --device cuda with the CUDA kernels "
                "built, and no --with-grad (tangents always take 16 rows)")
    unknown = [b for b in (args.backends or "").split(",") if b and b not in available_backends(device)]
    if unknown:   # before the baseline's minutes of timing, not after
        p.error(f"--backends: {', '.join(unknown)} not available on {device}; choose from {', '.join(available_backends(device))}")
    maps, dec = make_problem(args.decoder, device)
    coords = query_grid(args.queries, device)
    if args.decoder == "official":
        coords = coords.clamp(-1 + 1e-6, 1 - 1e-6)  # as the released decoder does

    with torch.no_grad():
        # Accuracy oracle: the reference in float64 on the first 4096 queries (the fp32 baseline has
        # rounding error of its own, reported in its row).
        probe = coords[:, :4096]
        if grad:
            probe = torch.rand(1, 4096, 2, generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1
        want = implicit_decode([m.double() for m in maps], probe.double(), _to_double(dec), backend="torch", with_grad=grad)

        def err(**kw) -> dict:
            out = implicit_decode(maps, probe, dec, **{"with_grad": grad, **kw})
            value, value_want = (out[0], want[0]) if grad else (out, want)
            errors = {"max_rel_err": ((value.double() - value_want).abs().max() / value_want.std()).item()}
            if grad:
                e = (out[1].double() - want[1]).abs() / want[1].std()
                errors["grad_rel_err_p999"] = e.flatten().quantile(0.999).item()
            return errors

        base = lambda: implicit_decode(maps, coords, dec, backend="torch", chunk=BASELINE_CHUNK, with_grad=grad)  # noqa: E731
        base_t = timeit(base, device)
        base_name = "released-style torch autograd (baseline)" if grad else "released-style torch (baseline)"
        results = [{"backend": base_name, "dtype": "fp32", "queries_per_s": args.queries / base_t,
                    "speedup_vs_baseline": 1.0, **err(backend="torch", chunk=BASELINE_CHUNK), "fold_ms": 0.0}]
        backends = args.backends.split(",") if args.backends else available_backends(device)
        runs = [(b, "fp32") for b in backends]
        both = list(dict.fromkeys(["torch", *backends]))   # torch once, whether --backends names it or not
        if device.type == "cuda":  # tensor cores: bf16 operands, fp32 accumulation (torch: autocast)
            runs += [(b, "bf16") for b in both if b in ("torch", "cuda", "triton")]
        elif cpu_supports_bf16() and not grad:  # AVX512_BF16 dot products (torch: autocast through oneDNN)
            runs += [(b, "bf16") for b in both if b in ("torch", "cpp")]
        runs = [(b, p, None) for b, p in runs] + [("cuda", p, rows) for rows in args.cuda_rows for p in ("fp32", "bf16")]
        for backend, precision, rows in runs:
            kw = dict(backend=backend, precision=precision, with_grad=grad)
            if backend == "torch":
                kw["chunk"] = TORCH_CHUNK
            with _cuda_max_rows(rows):
                implicit_decode(maps, coords[:, :1], dec, **kw, cache={})  # compiles the kernels (and folds)
                sync(device)
                t0 = time.perf_counter()
                kw["cache"] = {}
                implicit_decode(maps, coords[:, :1], dec, **kw)  # folds once: what one image costs
                sync(device)
                fold_ms = (time.perf_counter() - t0) * 1e3
                t = timeit(lambda: implicit_decode(maps, coords, dec, **kw), device)
                errors = err(**kw)
            results.append({
                "backend": backend if rows is None else f"cuda, at most {rows} rows per block",
                "dtype": precision,
                "queries_per_s": args.queries / t,
                "speedup_vs_baseline": base_t / t,
                **errors,
                "fold_ms": fold_ms,
                **({} if rows is None else {"cuda_max_rows": rows}),
            })
        if not grad:
            results += folded_rows(maps, dec, coords, probe, want, base_t, device)
        if not grad and device.type == "cuda" and "triton" in backends:
            results += shuffled_rows(maps, dec, coords, want, base_t, device)
    report = {"device": device_name(device), "decoder": args.decoder, "queries": args.queries, "with_grad": grad,
              "results": results}
    print(f"{args.decoder} decoder{' with its derivative' if grad else ''}, {args.queries} queries on {report['device']}")
    print(f"{'backend':42s} {'dtype':8s} {'queries/s':>12s} {'speedup':>8s} {'max rel err':>12s} {'fold ms':>8s}"
          + (f" {'grad err p99.9':>15s}" if grad else ""))
    for r in results:
        print(f"{r['backend']:42s} {r['dtype']:8s} {r['queries_per_s']:12.4g} {r['speedup_vs_baseline']:7.2f}x "
              f"{r['max_rel_err']:12.2e} {r['fold_ms']:8.1f}" + (f" {r['grad_rel_err_p999']:15.2e}" if grad else ""))
    write_report(args.json, report, None if argv is None else [__file__, *argv])
    return report


if __name__ == "__main__":
    main()
