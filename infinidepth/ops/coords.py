"""The coordinate convention, stated once.

A query is a normalised ``(y, x)`` pair. The image spans [-1, 1] on both axes, edge to edge; the
centre of pixel ``(i, j)`` of an ``H x W`` grid is at ``((i + 0.5) / H * 2 - 1, (j + 0.5) / W * 2 - 1)``.
Features are read by bilinear interpolation exactly as ``torch.nn.functional.grid_sample`` does with
``align_corners=False`` and zero padding (note that grid_sample wants ``(x, y)``: we flip).
Every backend of every op follows this; tests check it at the borders.
"""

from __future__ import annotations

import torch

#: the longest side of any output grid: pixel centres of a longer one are not distinct in float32
MAX_SIDE = 2**24


def pixel_centers(n: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Normalised centres of ``n`` pixels along one axis."""
    return (torch.arange(n, device=device, dtype=dtype) + 0.5) / n * 2 - 1


def grid_coords(height: int, width: int, batch: int = 1, device=None) -> torch.Tensor:
    """Dense query coordinates of an ``height x width`` output grid, ``[batch, height*width, 2]`` in (y, x).
    (``model.predict(..., region=...)`` queries part of a grid without building the rest.)"""
    from .gather import as_int

    height, width, batch = as_int(height, "height"), as_int(width, "width"), as_int(batch, "batch")
    if height <= 0 or width <= 0:
        raise ValueError(f"output size must be positive, got {height}x{width}")
    if batch < 0:
        raise ValueError(f"batch must be non-negative, got {batch}")
    ys = pixel_centers(height, device)
    xs = pixel_centers(width, device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    coords = torch.stack([gy, gx], dim=-1).reshape(1, -1, 2)
    return coords.expand(batch, -1, -1).contiguous()


def pixel_to_normalized(py: torch.Tensor, px: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Continuous pixel positions (pixel (0, 0)'s centre at 0.0) to normalised (y, x)."""
    return torch.stack([(py + 0.5) / height * 2 - 1, (px + 0.5) / width * 2 - 1], dim=-1)


def normalized_to_pixel(coords: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`pixel_to_normalized`: returns (py, px)."""
    return (coords[..., 0] + 1) * height / 2 - 0.5, (coords[..., 1] + 1) * width / 2 - 0.5


def clamp_to_pixel_centres(coords: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``coords`` moved inside the outermost pixel centres of an ``height x width`` grid: reading an
    image there bilinearly repeats its border pixels instead of blending them with the zero padding
    (a point's colour in the outer half-pixel of the image, which would otherwise come out darker)."""
    lim = torch.tensor([1 - 1 / height, 1 - 1 / width], device=coords.device, dtype=coords.dtype)
    return torch.maximum(torch.minimum(coords, lim), -lim)
