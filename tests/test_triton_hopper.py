"""The Triton decoder compiled ahead of time for Hopper (sm_90), no GPU needed: at the released
ViT-L widths its smallest autotuning config must fit an H100 SM's shared memory, in fp32 and bf16,
and in bf16 reach the tensor cores without spilling registers inside its loops (ptxas may keep a
word or two of the prologue in local memory for the epilogue: paid once per block).

The first H100 run found the opposite (the official decoder's 256-wide tail padded to one square
256x256 fp32 tile asked for 272 KB, so no config could launch); the interpreter, which CI uses for
correctness, has no shared memory to run out of, and it also accepts programs the real compiler
rejects (an fp32 dot against 16-bit weights in a branch after a taken return). Triton's own compiler
and ptxas build the binary here, through benchmarks/triton_aot.py (which clears TRITON_INTERPRET;
hence a subprocess).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

HOPPER_SHARED_BYTES = 227 * 1024  # the most one block can have on an H100/H200 (sm_90)


def test_released_widths_fit_hopper_shared_memory(tmp_path):
    script = Path(__file__).parents[1] / "benchmarks" / "triton_aot.py"
    report = tmp_path / "aot.json"
    done = subprocess.run([sys.executable, str(script), "--smallest", "--json", str(report)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(report.read_text())["rows"]
    assert {(r["decoder"], r["precision"]) for r in rows} == {(d, p) for d in ("official", "paper") for p in ("fp32", "bf16")}
    for r in rows:
        assert 0 < r["shared_bytes"] <= HOPPER_SHARED_BYTES, r
        if r["precision"] == "bf16":  # the 8K path: tensor cores, and no spill in the loops
            assert r["mma_sync"] + r["wgmma"] > 0 and r["spills_in_loops"] == 0, r
