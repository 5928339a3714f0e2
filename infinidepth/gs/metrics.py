"""Image metrics for novel views: PSNR, SSIM, and the hole fraction of a splatted render."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _check(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None):
    if a.shape != b.shape or a.dim() != 3 or a.shape[-1] != 3:
        raise ValueError(f"images must both be [H, W, 3], got {tuple(a.shape)} and {tuple(b.shape)}")
    if mask is not None and mask.shape != a.shape[:2]:
        raise ValueError(f"mask must be [H, W] = {tuple(a.shape[:2])}, got {tuple(mask.shape)}")


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Peak signal-to-noise ratio (dB) of images in [0, 1], over ``mask`` when given."""
    _check(a, b, mask)
    err = (a.double() - b.double()) ** 2
    mse = err[mask].mean() if mask is not None else err.mean()
    return math.inf if mse == 0 else float(-10 * torch.log10(mse))


def ssim(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Structural similarity (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03,
    data range 1), averaged over channels and over ``mask`` when given."""
    _check(a, b, mask)
    s = ssim_map(a.double(), b.double())
    return float(s[mask].mean() if mask is not None else s.mean())


def ssim_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM ``[H, W]`` of ``[H, W, 3]`` images, differentiable (a training loss)."""
    x, y = (t.permute(2, 0, 1)[:, None] for t in (a, b))                   # [3, 1, H, W]
    r = torch.arange(11, dtype=x.dtype, device=x.device) - 5
    k = torch.exp(-0.5 * (r / 1.5) ** 2)
    k = k / k.sum()
    w = (k[:, None] * k[None, :])[None, None]

    def blur(t):
        return F.conv2d(F.pad(t, (5, 5, 5, 5), mode="reflect"), w)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s[:, 0].mean(0)


def hole_fraction(alpha: torch.Tensor, mask: torch.Tensor | None = None, threshold: float = 0.5) -> float:
    """Fraction of (masked) pixels the splats leave uncovered: accumulated opacity below ``threshold``."""
    holes = alpha < threshold
    return float(holes[mask].float().mean() if mask is not None else holes.float().mean())
