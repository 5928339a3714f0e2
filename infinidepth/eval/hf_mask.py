"""High-frequency masks: where a depth map has fine detail (edges, thin structures), as the
InfiniDepth paper defines them, so that metrics can be reported on those regions separately.

1. the depth map, smoothed by Gaussians of each ``scale`` (pixels; 0 = unsmoothed), with holes
   handled by normalised convolution (a hole never leaks into its neighbours' values);
2. the absolute 4-neighbour Laplacian of each (0 where a neighbour is missing or out of the image);
3. the per-pixel maximum over scales, divided by its 98th percentile over valid pixels (its maximum
   when detail covers under 2% of the frame, where the percentile is 0) and clipped to 1;
4. sharpened by the exponent ``1 / tau``;
5. ``n`` distinct pixels drawn with probability proportional to that map (seeded; Gumbel top-k,
   which is exactly successive multinomial draws without replacement, at any image size).
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
    vf = v.double()[None, None]
    filled = torch.where(v, d, torch.zeros_like(d))[None, None]
    # 4 neighbours all valid (and inside the image): the Laplacian is defined there only.
    vp = F.pad(vf, (1, 1, 1, 1))
    ok = (vp[..., 1:-1, 1:-1] * vp[..., :-2, 1:-1] * vp[..., 2:, 1:-1] * vp[..., 1:-1, :-2] * vp[..., 1:-1, 2:])[0, 0] > 0
    energy = torch.zeros_like(d)
    for s in (0.0, *scales):
        sm = filled if s == 0 else _gaussian(filled, s) / _gaussian(vf, s).clamp_min(1e-12)
        sp = F.pad(sm, (1, 1, 1, 1), mode="replicate")[0, 0]
        lap = (sp[:-2, 1:-1] + sp[2:, 1:-1] + sp[1:-1, :-2] + sp[1:-1, 2:] - 4 * sp[1:-1, 1:-1]).abs()
        energy = torch.maximum(energy, torch.where(ok, lap, torch.zeros_like(lap)))
    # Round-off of the normalised convolution is not detail.
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
