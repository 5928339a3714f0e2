"""The Triton decoder compiled ahead of time for a GPU architecture, on any machine (no GPU needed):
shared memory, registers, spills and compile time of every autotuning config at the ViT-L widths.

    python benchmarks/triton_aot.py --json benchmarks/results/triton_aot_sm90.json

A config that asks for more shared memory than an SM has is compiled by the autotuner on the GPU
and then thrown away, so this table says which configs can run at all and what the first call of a
shape costs in compiling. Registers and spill bytes per thread are ptxas's own report of the build
(Triton prints it with ``knobs.nvidia.dump_ptxas_log``; it records them itself only when it loads a
kernel onto a GPU); spilled values live in local memory, and a config that spills in its inner
loop pays for it in traffic. The tensor-core
instructions counted in the PTX (mma.sync, Hopper's wgmma) say whether the dots reached them.
Triton's own compiler and ptxas build the binaries; TRITON_INTERPRET must be off (the script clears
it). tests/test_triton_hopper.py runs the smallest config this way in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402
from triton import knobs  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from common import device_name, write_report  # noqa: E402
from decoder import make_problem, query_grid  # noqa: E402

from infinidepth.kernels import fused_decode as fd  # noqa: E402
from infinidepth.ops.fold import fold_decoder  # noqa: E402

HOPPER_SHARED_BYTES = 227 * 1024  # the most one block can have on an H100/H200 (sm_90)
POINTER = {torch.int32: "*i32", torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16"}


def compile_config(decoder: str, precision: str, config, arch: int = 90) -> dict:
    """Compile the tuned decoder kernel for one problem and one autotuning config, as a GPU launch
    would (the same argument attributes): the shared memory it asks for (bytes), registers and spills
    per thread, tensor-core instructions, and the seconds the compile took."""
    tuned = fd._fused_decode_kernel_tuned
    names = list(inspect.signature(tuned.fn.fn).parameters)
    maps, dec = make_problem(decoder, torch.device("cpu"))
    args, consts, _ = fd.kernel_arguments(fold_decoder(maps, dec), query_grid(4096, "cpu"), precision, False)
    consts = dict(consts, **config.kwargs)
    sig = {n: POINTER[a.dtype] if isinstance(a, torch.Tensor) else "i32" for n, a in zip(names, args)}
    sig.update({k: "constexpr" for k in consts})
    src = ASTSource(fn=tuned.fn, signature=sig, constexprs={(names.index(k),): v for k, v in consts.items()},
                    attrs=jit_attributes(args))
    start = time.perf_counter()
    log = io.StringIO()
    with knobs.nvidia.scope(), knobs.compilation.scope(), contextlib.redirect_stdout(log):
        knobs.nvidia.dump_ptxas_log = True  # Triton prints ptxas -v of the build it makes
        knobs.compilation.always_compile = True  # never a cached binary: no log, and no compile time
        binary = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                options={"num_warps": config.num_warps, "num_stages": config.num_stages})
    seconds = round(time.perf_counter() - start, 2)
    return {"decoder": decoder, "precision": precision, **config.kwargs, "num_warps": config.num_warps,
            "num_stages": config.num_stages, "shared_bytes": binary.metadata.shared,
            "fits_sm90": binary.metadata.shared <= HOPPER_SHARED_BYTES, "compile_s": seconds,
            **register_usage(log.getvalue(), binary.asm["ptx"]), "spills_in_loops": spills_in_loops(binary.asm["cubin"])}


def jit_attributes(args) -> dict:
    """What Triton's launcher tells the compiler about the arguments: pointers aligned to 16 bytes and
    integers divisible by 16 are marked so (``tt.divisibility``), which lets it vectorise loads (the
    gathers' channel runs: 8 bf16 per instruction instead of one). Without this the binary is not
    the one a GPU run compiles."""
    def divisible(a):
        return a.data_ptr() % 16 == 0 if isinstance(a, torch.Tensor) else isinstance(a, int) and a % 16 == 0

    return {(i,): [["tt.divisibility", 16]] for i, a in enumerate(args) if divisible(a)}


def register_usage(ptxas_log: str, ptx: str) -> dict:
    """Registers and spill bytes per thread from ptxas's own log of the build, and the tensor-core
    instructions in the PTX."""
    regs = re.search(r"Used (\d+) registers", ptxas_log)
    spills = re.search(r"(\d+) bytes spill stores", ptxas_log)
    return {"registers": int(regs.group(1)) if regs else None, "spill_store_bytes": int(spills.group(1)) if spills else None,
            "mma_sync": len(re.findall(r"\bmma\.sync", ptx)), "wgmma": len(re.findall(r"\bwgmma\.mma_async", ptx))}


def spills_in_loops(cubin: bytes) -> int:
    """Local-memory loads and stores (spills) inside the kernel's loops, from the disassembly by
    Triton's own ``nvdisasm``: a branch back to an earlier label closes a loop. A spill outside
    every loop (a value kept from the prologue for the epilogue) is paid once per block; one inside
    the loop over channels is paid at every step."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([knobs.nvidia.nvdisasm.path, "-c", f.name], capture_output=True, text=True, check=True).stdout
    labels, spills, loops = {}, [], []
    for i, line in enumerate(sass.splitlines()):
        if label := re.match(r"^\.(L_x_\d+):", line):
            labels[label.group(1)] = i
        elif re.search(r"\b(STL|LDL)(\.\w+)*\b", line):
            spills.append(i)
        elif (branch := re.search(r"\bBRA\b.*\(\.(L_x_\d+)\)", line)) and branch.group(1) in labels:
            loops.append((labels[branch.group(1)], i))
    return sum(any(start < at < end for start, end in loops) for at in spills)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--decoders", default="official,paper")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--smallest", action="store_true", help="only the first (smallest) autotuning config")
    ap.add_argument("--json")
    args = ap.parse_args()
    configs = fd._fused_decode_kernel_tuned.configs
    rows = []
    for decoder in args.decoders.split(","):
        for precision in args.precisions.split(","):
            for config in configs[:1] if args.smallest else configs:
                row = compile_config(decoder, precision, config)
                rows.append(row)
                print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    write_report(args.json, {"benchmark": "Triton decoder compiled ahead of time for sm_90", "triton": triton.__version__,
                             "compiled_on": device_name(torch.device("cpu")), "shared_limit_bytes": HOPPER_SHARED_BYTES, "rows": rows})


if __name__ == "__main__":
    main()
