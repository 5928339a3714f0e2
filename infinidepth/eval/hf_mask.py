"""High-frequency masks: where a depth map has fine detail (edges, thin structures), as the
InfiniDepth paper defines them, so that metrics can be reported on those regions separately.

1. the depth map unsmoothed and smoothed by a Gaussian of each ``scale`` (pixels). The released
   code's energy (``training/utils/sampling_np.py``, ``_geom_energy``) takes the Laplacian at
   sigma 0.6 and 1.2 only; the unsmoothed one added here also catches one-pixel detail (a wire's
   edge), so our high-frequency masks are not exactly the released ones and HF rows are comparable
   between our runs, not to numbers made with the released masks;
2. the absolute 4-neighbour Laplacian of each, kept only where its whole stencil is valid data: at
   scale 0 the pixel and its 4 neighbours, at scale ``s`` the square of radius ``ceil(3 s) + 1``
   around the pixel (the Gaussian's support plus the Laplacian's reach), so the image border and
   the edges of holes are never mistaken for detail (a plane scores 0 everywhere, holes or not);
3. the per-pixel maximum over scales, divided by its 98th percentile over valid pixels (its maximum
   when detail covers under 2% of the frame, where the percentile is 0) and clipped to 1;
4. sharpened by the exponent ``1 / tau``;
5. ``n`` distinct pixels drawn with probability proportional to that map (seeded; Gumbel top-k,
   which is exactly successive multinomial draws without replacement, at any image size). Only
   pixels with a non-zero map can be drawn: a depth map with no detail (a plane) gets an empty mask,
   not a uniform one, and its image has no high-frequency row.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_SCALES = (0.6, 1.2)
DEFAULT_TAU = 0.8
DEFAULT_POINTS = 10_000


def _gaussian(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (r, r, 0, 0)), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r)), k.view(1, 1, -1, 1))


def _all_valid(v: torch.Tensor, reach: int, cross: bool) -> torch.Tensor:
    """Pixels whose neighbourhood (the 4 neighbours if ``cross``, else the square of radius ``reach``)
    is valid and inside the image."""
    bad = F.pad((~v).double()[None, None], (reach,) * 4, value=1.0)
    if cross:
        c = bad[0, 0]
        return ~((c[1:-1, 1:-1] + c[:-2, 1:-1] + c[2:, 1:-1] + c[1:-1, :-2] + c[1:-1, 2:]) > 0)
    return F.max_pool2d(bad, 2 * reach + 1, stride=1)[0, 0] == 0


def high_frequency_map(depth, valid=None, scales=DEFAULT_SCALES, tau: float = DEFAULT_TAU) -> np.ndarray:
    """Steps 1-4: a map in [0, 1] ``[H, W]`` (float32), 0 on invalid pixels."""
    d = torch.as_tensor(np.asarray(depth, np.float64))
    if d.dim() != 2:
        raise ValueError(f"depth must be a 2-D map, got shape {tuple(d.shape)}")
    v = torch.isfinite(d) & (d > 0) if valid is None else torch.as_tensor(np.asarray(valid, bool)) & torch.isfinite(d) & (d > 0)
    if not v.any():
        raise ValueError("the depth map has no valid pixel")
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau}")
    if any(s < 0 for s in scales):
        raise ValueError(f"scales must be non-negative, got {scales}")
    filled = torch.where(v, d, torch.zeros_like(d))[None, None]
    energy = torch.zeros_like(d)
    for s in (0.0, *scales):
        reach = 1 if s == 0 else max(1, math.ceil(3 * s)) + 1
        sm = filled if s == 0 else _gaussian(filled, s)
        sp = F.pad(sm, (1, 1, 1, 1))[0, 0]
        lap = (sp[:-2, 1:-1] + sp[2:, 1:-1] + sp[1:-1, :-2] + sp[1:-1, 2:] - 4 * sp[1:-1, 1:-1]).abs()
        ok = _all_valid(v, reach, cross=s == 0)
        energy = torch.maximum(energy, torch.where(ok, lap, torch.zeros_like(lap)))
    # Round-off of the smoothing is not detail.
    energy = torch.where(energy > 1e-9 * float(d[v].abs().max()), energy, torch.zeros_like(energy))
    p98 = float(np.percentile(energy[v].numpy(), 98))
    if p98 <= 0:  # detail on fewer than 2% of the pixels (one thin wire in a large frame): use the maximum
        p98 = float(energy.max())
    if p98 <= 0:
        return np.zeros(d.shape, np.float32)
    return ((energy / p98).clamp(0, 1) ** (1 / tau)).float().numpy()


def high_frequency_mask(depth, valid=None, n: int = DEFAULT_POINTS, seed: int = 0, scales=DEFAULT_SCALES,
                        tau: float = DEFAULT_TAU) -> np.ndarray:
    """Step 5: a boolean ``[H, W]`` mask of ``n`` pixels (fewer if fewer have a non-zero map)."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    w = torch.from_numpy(high_frequency_map(depth, valid, scales, tau)).reshape(-1).double()
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(w.shape, generator=g, dtype=torch.float64).clamp_min(1e-300)
    keys = torch.where(w > 0, torch.log(w) - torch.log(-torch.log(u)), torch.full_like(w, -math.inf))
    k = min(n, int((w > 0).sum()))
    mask = torch.zeros(w.shape, dtype=torch.bool)
    if k:
        mask[keys.topk(k).indices] = True
    return mask.reshape(np.shape(depth)).numpy()
