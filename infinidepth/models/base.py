"""What every implicit depth model offers: encode once, decode anywhere, predict at any size."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from infinidepth.ops import pixel_centers
from infinidepth.ops.gather import check_coords, resolve_backend

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class SampledPoints:
    """Points of the depth field at budgeted query positions (``model.sample_points``)."""

    coords: torch.Tensor  # [B, n, 2] normalised (y, x) query positions
    depth: torch.Tensor  # [B, n] depth re-queried there
    points: torch.Tensor  # [B, n, 3] camera frame (x right, y down, z forward)
    points_world: torch.Tensor  # [B, n, 3] after camera_to_world (the camera frame when none was given)
    colors: torch.Tensor  # [B, n, 3] the image's RGB in [0, 1], bilinear at the query positions


@dataclass
class Features:
    """The result of one encoder pass: feature maps the decoder gathers from, and per-image state."""

    maps: list[torch.Tensor]
    image_size: tuple[int, int]
    disparity_scale: torch.Tensor | None = None  # [B], the sensor model's median (prompt normalisation)
    extras: dict = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return self.maps[0].shape[0]


def check_image(image: torch.Tensor, multiple: int = 16) -> None:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor [B, 3, H, W], got {type(image).__name__}")
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"image must have shape [B, 3, H, W], got {tuple(image.shape)}")
    if not image.is_floating_point():
        raise TypeError(f"image must be a float tensor with values in [0, 1], got {image.dtype}")
    H, W = image.shape[-2:]
    if H % multiple or W % multiple or H == 0 or W == 0:
        raise ValueError(f"image height and width must be positive multiples of {multiple}, got {H}x{W}")
    if not torch.isfinite(image).all():
        raise ValueError("image contains NaN or infinite values")
    lo, hi = float(image.min()), float(image.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"image values must be in [0, 1], got range [{lo:.3g}, {hi:.3g}]")


class ImplicitDepthModel(nn.Module):
    """Base of the models: subclasses define ``encode``, ``decode_raw`` and ``to_depth``."""

    arch: str = ""
    #: what ``decode`` returns, for people and for the CLI
    output_space: str = ""
    #: where a relative prediction is aligned to a reference ("disparity", "log_depth"); None if metric
    alignment: str | None = None

    def __init__(self):
        super().__init__()
        #: decoder backend used when a call does not name one ("auto": the fastest available)
        self.backend = "auto"
        self.register_buffer("_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    # -- to be provided by subclasses (and a ``config`` dataclass with ``to_dict``) -------------
    def config_dict(self) -> dict:
        return self.config.to_dict()

    def encode(self, image: torch.Tensor, sparse_depth: torch.Tensor | None = None) -> Features:
        raise NotImplementedError

    def decode_raw(self, feats: Features, coords: torch.Tensor, backend: str, chunk: int | None, with_grad: bool = False):
        """Raw output ``[B, N]``, or with ``with_grad`` also its derivative ``[B, N, 2]`` w.r.t. (y, x)."""
        raise NotImplementedError

    def to_depth(self, raw: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self._mean.device

    def resolved_backend(self, backend: str | None = None) -> str:
        return resolve_backend(backend or self.backend, self.device)

    @torch.no_grad()
    def decode(self, feats: Features, coords: torch.Tensor, backend: str | None = None, chunk: int | None = 65536,
               with_grad: bool = False):
        """Raw network output at ``coords`` ``[B, N, 2]`` (normalised y, x) -> ``[B, N]``; with
        ``with_grad`` also its exact derivative ``[B, N, 2]`` with respect to (y, x)."""
        if not isinstance(feats, Features):
            raise TypeError("decode expects the Features returned by model.encode(image)")
        check_coords(coords, feats.batch)
        return self.decode_raw(feats, coords.to(self.device), self.resolved_backend(backend), chunk, with_grad)

    @torch.no_grad()
    def decode_depth(self, feats: Features, coords: torch.Tensor, backend: str | None = None, with_grad: bool = False):
        """Depth at ``coords`` ``[B, N]``; with ``with_grad`` also d depth / d (y, x) ``[B, N, 2]`` (the
        decoder's derivative through :meth:`to_depth` by the chain rule)."""
        if not with_grad:
            return self.to_depth(self.decode(feats, coords, backend=backend))
        raw, grad = self.decode(feats, coords, backend=backend, with_grad=True)
        with torch.enable_grad():
            r = raw.detach().float().requires_grad_(True)
            depth = self.to_depth(r)
            (slope,) = torch.autograd.grad(depth.sum(), r)
        return depth.detach(), slope[..., None] * grad.float()

    @torch.no_grad()
    def predict(
        self,
        image: torch.Tensor,
        output_size: tuple[int, int] | None = None,
        sparse_depth: torch.Tensor | None = None,
        backend: str | None = None,
        chunk: int = 65536,
        progress: bool = False,
    ) -> torch.Tensor:
        """Depth ``[B, 1, H_out, W_out]`` on a dense grid of any size (default: the input's)."""
        feats = self.encode(image, sparse_depth=sparse_depth)
        H, W = output_size or image.shape[-2:]
        H, W = int(H), int(W)
        if H <= 0 or W <= 0:
            raise ValueError(f"output size must be positive, got {H}x{W}")
        B = image.shape[0]
        out = torch.empty((B, H * W), device=self.device, dtype=torch.float32)
        rows_per_step = max(1, chunk // W)
        steps = range(0, H, rows_per_step)
        if progress:
            from tqdm import tqdm

            steps = tqdm(steps, desc=f"decoding {H}x{W}", unit="tile", total=len(steps))
        for y0 in steps:
            y1 = min(H, y0 + rows_per_step)
            raw = self.decode(feats, _rows(H, W, y0, y1, B, self.device), backend=backend, chunk=None)
            out[:, y0 * W : y1 * W] = self.to_depth(raw).float()
        return out.reshape(B, 1, H, W)

    @torch.no_grad()
    def sample_points(
        self,
        image: torch.Tensor,
        n: int,
        intrinsics,
        camera_to_world=None,
        strategy: str = "surface_area",
        seed: int | None = None,
        sparse_depth: torch.Tensor | None = None,
        backend: str | None = None,
    ) -> SampledPoints:
        """``n`` points per image spread evenly over the visible surfaces, as the GS head needs.

        Two passes over the one encoding: dense depth and its exact derivative at the image's pixel
        centres (-> normals -> surface-area weights), then depth at the ``n`` budgeted queries.
        ``intrinsics`` ``[3, 3]`` or ``[B, 3, 3]`` in pixels of ``image``; ``camera_to_world``
        ``[4, 4]`` or ``[B, 4, 4]`` (optional). ``strategy``: ``"surface_area"`` (ours) or
        ``"triangle"`` (the released triangle-area sampler, for comparison). Deterministic for a seed.
        """
        from infinidepth.ops import grid_coords
        from infinidepth.ops.gather import bilinear_gather_reference
        from infinidepth.sampling import (backproject, check_intrinsics, surface_area_sample, surface_normals,
                                          to_world, triangle_area_sample)

        if strategy not in ("surface_area", "triangle"):
            raise ValueError(f"strategy must be 'surface_area' or 'triangle', got {strategy!r}")
        check_image(image)
        B, _, H, W = image.shape
        K = check_intrinsics(intrinsics, B, self.device)
        feats = self.encode(image, sparse_depth=sparse_depth)
        dense = grid_coords(H, W, B, self.device)
        if strategy == "surface_area":
            depth, grad = self.decode_depth(feats, dense, backend=backend, with_grad=True)
            depth_map = depth.reshape(B, 1, H, W)
            normals = surface_normals(depth_map, grad.reshape(B, H, W, 2).permute(0, 3, 1, 2), K)
            coords = surface_area_sample(depth_map, normals, K, n, seed=seed, backend=self.resolved_backend(backend))
        else:
            depth_map = self.decode_depth(feats, dense, backend=backend).reshape(B, 1, H, W)
            coords = triangle_area_sample(depth_map, K, n, seed=seed)
        depth = self.decode_depth(feats, coords, backend=backend)
        points = backproject(depth, coords, K, (H, W))
        colors = bilinear_gather_reference(image.to(self.device, torch.float32), coords).clamp(0, 1)
        return SampledPoints(coords, depth, points, to_world(points, camera_to_world), colors)


def _rows(H: int, W: int, y0: int, y1: int, batch: int, device) -> torch.Tensor:
    """Query coordinates of rows y0..y1 of an H x W output grid (no full-size grid is built)."""
    ys = pixel_centers(H, device)[y0:y1]
    xs = pixel_centers(W, device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gy, gx], dim=-1).reshape(1, -1, 2).expand(batch, -1, -1)
