"""The coordinate convention, against hand-written bilinear interpolation (not grid_sample)."""

import numpy as np
import pytest
import torch

from infinidepth.ops import bilinear_gather_reference, grid_coords, normalized_to_pixel, pixel_to_normalized


def bilinear_by_hand(feat: np.ndarray, y: float, x: float) -> np.ndarray:
    C, H, W = feat.shape
    py, px = (y + 1) * H / 2 - 0.5, (x + 1) * W / 2 - 0.5
    y0, x0 = int(np.floor(py)), int(np.floor(px))
    out = np.zeros(C)
    for yy in (y0, y0 + 1):
        for xx in (x0, x0 + 1):
            w = (1 - abs(py - yy)) * (1 - abs(px - xx))
            if 0 <= yy < H and 0 <= xx < W:
                out += w * feat[:, yy, xx]
    return out


def test_grid_coords_are_pixel_centres():
    c = grid_coords(3, 4)[0]
    assert c.shape == (12, 2)
    assert torch.allclose(c[0], torch.tensor([-2 / 3, -3 / 4]))
    assert torch.allclose(c[-1], torch.tensor([2 / 3, 3 / 4]))
    py, px = normalized_to_pixel(c, 3, 4)
    assert torch.allclose(py.reshape(3, 4), torch.arange(3.0)[:, None].expand(3, 4), atol=1e-6)
    assert torch.allclose(px.reshape(3, 4), torch.arange(4.0)[None].expand(3, 4), atol=1e-6)
    assert torch.allclose(pixel_to_normalized(py, px, 3, 4), c)


@pytest.mark.parametrize("y,x", [(-1, -1), (1, 1), (-1, 0.3), (0.999, -1), (-1.2, 0), (0, 1.3), (0.1, 0.2), (-0.75, 0.5)])
def test_reference_matches_hand_bilinear_at_borders(y, x):
    feat = torch.randn(1, 3, 4, 5, dtype=torch.float64)
    got = bilinear_gather_reference(feat, torch.tensor([[[y, x]]], dtype=torch.float64))[0, 0].numpy()
    want = bilinear_by_hand(feat[0].numpy(), y, x)
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_edge_reads_half_the_edge_pixel_and_outside_reads_zero():
    feat = torch.ones(1, 1, 4, 4)
    on_edge = bilinear_gather_reference(feat, torch.tensor([[[-1.0, 0.0]]]))
    assert on_edge.item() == pytest.approx(0.5)
    outside = bilinear_gather_reference(feat, torch.tensor([[[-1.5, 0.0]]]))
    assert outside.item() == 0.0
