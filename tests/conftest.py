import os

# Triton kernels run on the CPU through the interpreter; it must be set before triton is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference relative to the reference's spread (the tolerance unit of the issues)."""
    scale = b.float().std().item() if b.numel() > 1 else 1.0
    return ((a.float() - b.float()).abs().max().item()) / max(scale, 1e-12)


def rms_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """RMS difference relative to the reference's spread (the bf16 tolerance unit)."""
    b = b.double()
    return ((a.double() - b).norm() / (b - b.mean()).norm().clamp_min(1e-12)).item()


class RunsCode:
    """Unpickled by a plain torch.load, this makes the directory ``marker``: code named by a file ran.
    The loaders' tests put one in a checkpoint and check that the marker never appears."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)
