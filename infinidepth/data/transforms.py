"""From a loaded frame to a training sample: cleaning, augmentation, sub-pixel depth supervision.

A frame is an RGB image, a z-depth map of the same size (metres) and its intrinsics. The network sees
the image resized to its input size; the ground truth stays at full resolution and is queried at
continuous positions, so the decoder is supervised below the input's pixel (the paper's sparse
sub-pixel supervision). Coordinates are normalised ``(y, x)`` (``infinidepth/ops/coords.py``), the same
for the network image and the ground truth, since both describe the same field of view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from infinidepth.sampling.camera import check_size, scale_intrinsics


def clean_depth(depth, max_depth: float | None = None, min_depth: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(depth, valid)``: NaN, infinite, non-positive (and outside ``[min_depth, max_depth]``) samples
    become invalid, with depth 0 there, so no bad value can reach a loss."""
    depth = torch.as_tensor(np.asarray(depth, dtype=np.float32) if not torch.is_tensor(depth) else depth).float()
    valid = torch.isfinite(depth) & (depth > 0)
    if max_depth is not None:
        valid &= depth <= max_depth
    if min_depth is not None:
        valid &= depth >= min_depth
    return torch.where(valid, depth, torch.zeros_like(depth)), valid


def sample_depth_pairs(depth: torch.Tensor, valid: torch.Tensor, n: int, generator: torch.Generator | None = None):
    """``n`` coordinate-depth pairs at uniformly random sub-pixel positions of valid pixels.

    A position is a valid pixel chosen uniformly, plus a uniform offset inside it. Its depth is the
    bilinear interpolation of the four surrounding pixel centres when all four exist and are valid;
    otherwise the depth of the pixel it lies in (nearest), so a value is never blended with a missing
    one or across the border. Returns ``coords [n, 2]`` (normalised y, x) and ``values [n]``.
    """
    if depth.ndim != 2 or valid.shape != depth.shape:
        raise ValueError(f"depth and valid must be [H, W] maps of one size, got {tuple(depth.shape)} and {tuple(valid.shape)}")
    valid = valid.bool()
    H, W = depth.shape
    idx = valid.reshape(-1).nonzero()[:, 0]
    if idx.numel() == 0:
        raise ValueError("no valid depth to sample from")
    pick = idx[torch.randint(idx.numel(), (n,), generator=generator)]
    i, j = pick // W, pick % W
    off = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    py, px = i + off[:, 0], j + off[:, 1]                      # continuous, pixel i spans [i, i + 1)
    coords = torch.stack([py / H * 2 - 1, px / W * 2 - 1], -1).float()

    cy, cx = py - 0.5, px - 0.5                                # in pixel-centre index units
    y0, x0 = cy.floor().long(), cx.floor().long()
    wy, wx = (cy - y0).float(), (cx - x0).float()
    inside = (y0 >= 0) & (x0 >= 0) & (y0 + 1 < H) & (x0 + 1 < W)
    y0c, x0c = y0.clamp(0, H - 2 if H > 1 else 0), x0.clamp(0, W - 2 if W > 1 else 0)
    y1c, x1c = (y0c + 1).clamp(max=H - 1), (x0c + 1).clamp(max=W - 1)
    taps = [(y0c, x0c, (1 - wy) * (1 - wx)), (y0c, x1c, (1 - wy) * wx), (y1c, x0c, wy * (1 - wx)), (y1c, x1c, wy * wx)]
    all_valid = inside.clone()
    value = torch.zeros(n)
    for y, x, w in taps:
        all_valid &= valid[y, x]
        value = value + w * depth[y, x]
    values = torch.where(all_valid, value, depth[i, j])
    return coords, values


@dataclass
class Augment:
    """Training augmentation. The crop keeps the network input's aspect ratio and covers
    ``scale`` (a range) of the largest such crop; the ground truth is cropped to the same field of
    view at its own resolution. A horizontal flip mirrors the principal point (``cx -> W - cx``).
    Colour jitter changes brightness, contrast, saturation and gamma of the network image only.
    ``Augment(scale=(1, 1), flip=False, color=0)`` is a plain centre crop to the input aspect."""

    scale: tuple[float, float] = (0.6, 1.0)
    flip: bool = True
    color: float = 0.2

    def __post_init__(self):
        # Checked here, once: a bad setting found per sample would skip every frame of a set in turn.
        try:
            lo, hi = (float(v) for v in self.scale)
        except (TypeError, ValueError):
            raise ValueError(f"Augment.scale must be two numbers (lo, hi), got {self.scale!r}") from None
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"Augment.scale must satisfy 0 < lo <= hi <= 1 (a fraction of the largest crop), got {self.scale!r}")
        self.scale = (lo, hi)
        color = float(self.color)
        if not 0 <= color <= 1:   # beyond 1 the gamma factor 1 +- color can go negative: 0 ** negative is inf
            raise ValueError(f"Augment.color must be in [0, 1], got {self.color!r}")
        self.color = color


def check_intrinsics(K) -> torch.Tensor:
    """``[3, 3]`` float64 pinhole intrinsics with finite entries and positive focal lengths, or a ValueError."""
    K = torch.as_tensor(np.asarray(K, dtype=np.float64) if not torch.is_tensor(K) else K, dtype=torch.float64)
    if K.shape != (3, 3):
        raise ValueError(f"intrinsics must be a 3x3 matrix, got shape {tuple(K.shape)}")
    if not torch.isfinite(K).all():
        raise ValueError(f"intrinsics hold NaN or infinite values: {K.tolist()}")
    if not (K[0, 0] > 0 and K[1, 1] > 0):
        raise ValueError(f"intrinsics need positive focal lengths fx = K[0,0] and fy = K[1,1], got "
                         f"{K[0, 0].item():g} and {K[1, 1].item():g}")
    return K.clone()   # the caller's matrix is never changed by the crop and flip that follow


def _check_rgb(rgb) -> torch.Tensor:
    """``[H, W, 3]`` uint8, or float in [0, 1], -> float ``[H, W, 3]`` in [0, 1]."""
    rgb = torch.as_tensor(np.asarray(rgb) if not torch.is_tensor(rgb) else rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"image must be [H, W, 3] RGB, got shape {tuple(rgb.shape)}")
    if rgb.dtype == torch.uint8:
        return rgb.float() / 255
    if not rgb.is_floating_point():   # 16-bit and other integer images: their scale is unknown here
        raise ValueError(f"image must be uint8, or float in [0, 1], got dtype {rgb.dtype}")
    rgb = rgb.float()
    lo, hi = (rgb.min().item(), rgb.max().item()) if rgb.numel() else (0.0, 0.0)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo >= -1e-3 and hi <= 1 + 1e-3):   # rounding may overshoot
        raise ValueError(f"a float image must hold values in [0, 1], got [{lo:.4g}, {hi:.4g}] "
                         "(divide 8-bit values by 255)")
    return rgb.clamp(0, 1)


def prepare(rgb, depth, valid, K, size: tuple[int, int], n_pairs: int, augment: Augment | None,
            generator: torch.Generator) -> dict:
    """One sample: see :class:`infinidepth.data.datasets.DepthDataset` for the keys.

    ``rgb`` ``[H, W, 3]`` uint8 or float in [0, 1], ``depth``/``valid`` ``[H, W]`` (tensors or
    arrays; depth that is not finite and positive is never valid), ``K`` ``[3, 3]`` in pixels of that
    grid. Without ``augment`` the whole frame is resized to ``size``."""
    h, w = check_size(size)
    if int(n_pairs) <= 0:
        raise ValueError(f"n_pairs must be positive, got {n_pairs}")
    rgb = _check_rgb(rgb)
    depth = torch.as_tensor(np.asarray(depth) if not torch.is_tensor(depth) else depth).float()
    valid = torch.as_tensor(np.asarray(valid) if not torch.is_tensor(valid) else valid).bool()
    if depth.ndim != 2 or valid.shape != depth.shape:
        raise ValueError(f"depth and valid must be [H, W] maps of one size, got {tuple(depth.shape)} and {tuple(valid.shape)}")
    valid = valid & torch.isfinite(depth) & (depth > 0)        # a mask that lets a hole through never reaches the loss
    depth = torch.where(valid, depth, torch.zeros_like(depth))
    H, W = depth.shape
    if rgb.shape[:2] != (H, W):
        raise ValueError(f"image is {tuple(rgb.shape[:2])} but its depth map is {(H, W)}")
    K = check_intrinsics(K)
    y0, x0, ch, cw = 0, 0, H, W
    flip = False
    if augment is not None:
        s = float(torch.empty(1, dtype=torch.float64).uniform_(*augment.scale, generator=generator))
        fit = min(H / h, W / w)                                  # largest crop of the input's aspect
        ch, cw = max(1, min(H, round(h * fit * s))), max(1, min(W, round(w * fit * s)))
        y0 = int(torch.randint(H - ch + 1, (1,), generator=generator))
        x0 = int(torch.randint(W - cw + 1, (1,), generator=generator))
        flip = augment.flip and bool(torch.rand(1, generator=generator) < 0.5)
    rgb, depth, valid = rgb[y0:y0 + ch, x0:x0 + cw], depth[y0:y0 + ch, x0:x0 + cw], valid[y0:y0 + ch, x0:x0 + cw]
    K = K.clone()
    K[0, 2] -= x0
    K[1, 2] -= y0
    if flip:
        rgb, depth, valid = rgb.flip(1), depth.flip(1), valid.flip(1)
        K[0, 2] = cw - K[0, 2]
        K[0, 1] = -K[0, 1]                                      # u = fx x + s y + cx mirrors with x -> -x
    image = rgb.permute(2, 0, 1)[None]
    if (ch, cw) != (h, w):
        image = F.interpolate(image, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    image = image[0].clamp(0, 1)
    if not valid.any():
        raise ValueError("the crop holds no valid depth")
    coords, values = sample_depth_pairs(depth, valid, int(n_pairs), generator)
    if augment is not None and augment.color > 0:   # last: the jitter never changes the supervision
        image = _jitter(image, augment.color, generator)
    return {
        "image": image.contiguous(),
        "depth": depth[None].contiguous(),
        "valid": valid[None].contiguous(),
        "intrinsics": scale_intrinsics(K, (ch, cw), (h, w)).float(),
        "depth_intrinsics": K.float(),
        "coords": coords,
        "coord_depth": values,
    }


def _jitter(image: torch.Tensor, c: float, generator: torch.Generator) -> torch.Tensor:
    b, k, s, g = (1 + c * (2 * torch.rand(4, generator=generator) - 1)).tolist()
    image = image * b
    mean = image.mean()
    image = (image - mean) * k + mean
    grey = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])[None]
    image = (image - grey) * s + grey
    return image.clamp(0, 1) ** g


def collate(samples: list[dict]) -> dict:
    """Batch samples: tensors of equal shapes are stacked; full-resolution ground truths of
    different sizes (crops of different datasets) stay lists."""
    out = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if torch.is_tensor(values[0]) and all(v.shape == values[0].shape for v in values):
            out[key] = torch.stack(values)
        else:
            out[key] = values
    return out
