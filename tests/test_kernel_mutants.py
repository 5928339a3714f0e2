"""Kernel faults that a mutation audit planted and the rest of the suite let through.

Each test below failed on one planted fault (named in its docstring) and passes on the kernels as
they are. Expected values come from the plain-PyTorch reference or a closed form, never from the
kernel under test. Triton runs under the interpreter (tests/conftest.py sets TRITON_INTERPRET=1).
"""

import pytest
import torch

from infinidepth.ops import (ConcatDecoder, available_backends, bilinear_gather, bilinear_gather_reference,
                             implicit_decode)

from conftest import rel_err
from test_implicit_decode import cast, lin

KERNEL_BACKENDS = [b for b in available_backends("cpu") if b != "torch"]


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_gather_of_more_channels_than_one_block(backend):
    """130 channels: more than the Triton gather's block of 128 channels, and not a multiple of it,
    so a second block of channels runs. The fuzzed gather tests stop at 40 channels: with the
    channel block's offset left out of the kernel (``chan = tl.arange(0, BLOCK_C)``), both blocks
    wrote channels 0-127 and channels 128 and 129 were never written, and that went unseen."""
    g = torch.Generator().manual_seed(11)
    feat = torch.randn(2, 130, 3, 5, generator=g)
    coords = torch.rand(2, 37, 2, generator=g) * 2.4 - 1.2  # inside, on the borders and beyond
    coords[:, :2] = torch.tensor([[-1.0, 1.0], [1.0, -1.0]])
    got = bilinear_gather(feat, coords, backend=backend)
    want = bilinear_gather_reference(feat.double(), coords.double())
    assert got.shape == want.shape
    assert rel_err(got, want) < 1e-5
    assert rel_err(got[..., 128:], want[..., 128:]) < 1e-5  # the second block's channels themselves


@pytest.mark.skipif("triton" not in KERNEL_BACKENDS, reason="triton is not available")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_triton_sums_stay_fp32_in_16_bit_precision(precision):
    """16-bit precision rounds the dots' operands, never their sums. A program whose operands are
    all exact in fp16 (a map of ones, weights 2048 and 1) but whose sum, 2048 + 1, is not (fp16's
    spacing at 2048 is 2): fp32 sums give exactly 2049. The 16-bit path's own test bounds the error
    by 1e-2 of the output's spread, and a layer accumulated in fp16 across its chunks (the planted
    fault ``acc = fp16(acc + dot)``) stayed inside that bound; here it gives 2048."""
    from infinidepth.kernels.fused_decode import fused_decode_triton
    from infinidepth.ops.fold import FoldedDecoder, FoldedLayer

    width = 256  # several chunks of the wide layer in every block configuration
    ones = torch.ones(1, 3, 4, width)  # channels-last [B, H, W, C]
    weight = torch.zeros(1, width)
    weight[0, 0], weight[0, -1] = 2048.0, 1.0  # in the first chunk and in the last one
    folded = FoldedDecoder([FoldedLayer(None, torch.zeros(width), [ones], "relu"),
                            FoldedLayer(weight, torch.zeros(1), act="none")])
    coords = torch.rand(1, 20, 2, generator=torch.Generator().manual_seed(2)) * 0.6 - 0.3  # every tap inside
    got = fused_decode_triton(folded, coords, precision=precision)
    torch.testing.assert_close(got, torch.full((1, 20), 2049.0), rtol=0, atol=0.25)


@pytest.mark.skipif("cpp" not in KERNEL_BACKENDS, reason="extension not built")
def test_cpp_gemm_row_tails_of_the_last_tile():
    """The CPU decoder runs tiles of 48 queries through a GEMM blocked in 6 rows x 16 columns; the
    last tile's 1 to 5 leftover rows take smaller blocks. The fuzzed tests' concat decoders are
    narrower than 16 (the edge loop only), so their values never reached those blocks: with the
    5-row block left out, only the tangent test (3 x 5 rows) noticed. Here every leftover count, in
    a decoder whose hidden layers are 16 and 32 wide."""
    torch.manual_seed(5)
    decoder = ConcatDecoder([lin(7, 32), lin(32, 16), lin(16, 1)])
    maps = [torch.randn(1, 3, 4, 5, dtype=torch.float64), torch.randn(1, 4, 3, 6, dtype=torch.float64)]
    for n in range(49, 54):  # 48 + 1 ... 48 + 5 queries
        coords = torch.rand(1, n, 2, dtype=torch.float64) * 2.2 - 1.1
        want = implicit_decode(maps, coords, decoder, backend="torch")
        got = implicit_decode([m.float() for m in maps], coords.float(), cast(decoder, torch.float32), backend="cpp")
        assert rel_err(got, want) < 1e-5, n
