"""Gaussian heads: from sampled points (and the depth model's features) to Gaussians.

- :class:`PointHead` (the paper's): per point, its colour, its viewing ray in Plücker coordinates and
  the encoder features bilinearly sampled there go through one shared MLP; separate linear heads give
  a position offset, a colour offset, the scale, the opacity and the rotation. Activations:
  offset = tanh(.) * 2 * footprint (at most two footprints), colour = clamp(rgb + 0.5 tanh(.), 0, 1),
  scale = footprint * exp(clamp(., log 0.75, 4)) per axis, opacity = sigmoid(.), rotation = normalise(. + (1, 0, 0, 0)).
  ``footprint`` is the local spacing of the sampled points (mean distance to the 3 nearest, the size
  rule of the plain splats, :func:`~infinidepth.gs.splats.point_spacing`). It grows with depth as
  the scene does, so the head's outputs mean the same at 1 m and at 100 m; and unlike the size of a
  pixel at the point's depth it also follows the point count and the sampler's density (the
  surface-area sampler puts more points per pixel far away), so a head trained with a few thousand
  points makes neither blur nor holes with hundreds of thousands.
  No axis is shorter than the plain splats' size, 0.75 footprints (:data:`~infinidepth.gs.splats.SPLAT_SIZE`):
  narrower Gaussians leave gaps between neighbours that only the rasteriser's fixed 0.3 px²
  anti-aliasing fills, and only where the points are a pixel or two apart on screen, as in training
  (views rendered at the network input's size). Rendered finer (``infinidepth gs`` renders at the
  picture's size, 4x the demo model's input) the gaps show as specks, whatever the point count.
- :class:`PixelAlignedHead`: the released GS head (``GSPixelAlignPredictor``: convolutions over the
  image, the depth map and the ViT tokens, 37 channels per pixel), loadable from the released GS
  checkpoint (keys ``encoder.<name>``). It makes one Gaussian per pixel with the released activations
  (opacity sigmoid, scale clamp(softplus(x - 4), 1e-10, 5), unit quaternion, degree-2 SH damped per
  band); their attributes are resampled bilinearly at the sampled points, as the released code does,
  except that border pixels are repeated outward (as for the colours) where it blends in zeros. The
  centres are the sampled points themselves (its sub-pixel offsets are a pixel-grid device and are not
  used); the SH DC term gets the point's colour.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from infinidepth.checkpoint import CheckpointError, load_state_dict_strict, read_torch_weights
from infinidepth.ops.coords import clamp_to_pixel_centres
from infinidepth.ops.gather import bilinear_gather_reference

from .gaussians import Gaussians, rgb_to_sh0
from .splats import SPLAT_SIZE, point_spacing


def plucker(rays: torch.Tensor, origin: torch.Tensor | None = None) -> torch.Tensor:
    """Plücker coordinates ``[N, 6]`` (unit direction, origin x direction) of rays ``[N, 3]``."""
    d = F.normalize(rays, dim=-1)
    o = torch.zeros_like(d) if origin is None else origin.expand_as(d)
    return torch.cat([d, torch.cross(o, d, dim=-1)], -1)


class PointHead(nn.Module):
    def __init__(self, feature_dim: int, hidden: int = 128):
        super().__init__()
        self.feature_dim = feature_dim
        self.mlp = nn.Sequential(nn.Linear(3 + 6 + feature_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU())
        self.offset, self.color = nn.Linear(hidden, 3), nn.Linear(hidden, 3)
        self.scale, self.opacity, self.rotation = nn.Linear(hidden, 3), nn.Linear(hidden, 1), nn.Linear(hidden, 4)

    def forward(self, points: torch.Tensor, colors: torch.Tensor, features: torch.Tensor) -> Gaussians:
        """``points [N, 3]`` camera frame (at least 4 distinct ones: their spacing sizes the Gaussians),
        ``colors [N, 3]`` in [0, 1], ``features [N, feature_dim]`` (sampled at the points)."""
        n = points.shape[0]
        if n == 0:
            raise ValueError("no points to turn into Gaussians")
        if points.shape != (n, 3) or colors.shape != (n, 3) or features.shape != (n, self.feature_dim):
            raise ValueError(f"expected points/colors [N, 3] and features [N, {self.feature_dim}], got "
                             f"{tuple(points.shape)}, {tuple(colors.shape)}, {tuple(features.shape)}")
        if not (torch.isfinite(points).all() and (points[:, 2] > 0).all()):
            raise ValueError("points must be finite and in front of the camera (z > 0)")
        if not (torch.isfinite(colors).all() and torch.isfinite(features).all()):
            raise ValueError("colors and features must be finite (they have NaN or infinite values)")
        h = self.mlp(torch.cat([colors, plucker(points), features], -1))
        footprint = point_spacing(points).to(points)[:, None]
        means = points + 2 * footprint * torch.tanh(self.offset(h))
        rgb = (colors + 0.5 * torch.tanh(self.color(h))).clamp(0, 1)
        rot = F.normalize(self.rotation(h) + torch.tensor([1.0, 0, 0, 0], device=h.device), dim=-1)
        scales = footprint * torch.exp(self.scale(h).clamp(math.log(SPLAT_SIZE), 4))
        return Gaussians(means=means, scales=scales, rotations=rot,
                         opacities=torch.sigmoid(self.opacity(h))[:, 0], sh=rgb_to_sh0(rgb)[:, :, None])


class PixelAlignedHead(nn.Module):
    SH_DEGREE = 2

    def __init__(self, token_dim: int = 1024):
        super().__init__()
        self.rgb_encoder = nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1), nn.GELU(), nn.Conv2d(32, 64, 3, 1, 1), nn.GELU())
        self.depth_encoder = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1), nn.GELU(), nn.Conv2d(16, 32, 3, 1, 1), nn.GELU())
        self.dino_projector = nn.Sequential(nn.Conv2d(token_dim, 256, 1), nn.GELU(), nn.Conv2d(256, 128, 1))
        self.gaussian_regressor = nn.Sequential(nn.Conv2d(224, 64, 3, 1, 1), nn.GELU(), nn.Conv2d(64, 64, 3, 1, 1))
        c = self.channels
        self.gaussian_head = nn.Sequential(nn.Conv2d(256, c, 3, 1, 1, padding_mode="replicate"), nn.GELU(),
                                           nn.Conv2d(c, c, 3, 1, 1, padding_mode="replicate"))
        damp = torch.ones((self.SH_DEGREE + 1) ** 2)
        for band in range(1, self.SH_DEGREE + 1):
            damp[band**2:(band + 1) ** 2] = 0.1 * 0.25**band
        self.register_buffer("sh_damp", damp, persistent=False)

    @classmethod
    def from_checkpoint(cls, path) -> "PixelAlignedHead":
        """The released GS checkpoint (``encoder.``-prefixed keys, in ``state_dict`` or at the top)."""
        return cls.from_weights(read_torch_weights(path), path)   # runs no code named by the file

    @classmethod
    def from_weights(cls, sd: dict, path) -> "PixelAlignedHead":
        """The head from the tensors of the released GS checkpoint ``path``; its token width (1024 for
        the released ViT-L) is read off ``encoder.dino_projector.0.weight``."""
        proj = sd.get("encoder.dino_projector.0.weight")
        head = cls(proj.shape[1] if isinstance(proj, torch.Tensor) and proj.dim() == 4 else 1024)
        own = {k for k in head.state_dict()}
        sd = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.") and k[len("encoder."):] in own}
        if not sd:
            raise CheckpointError(f"{path}: no 'encoder.'-prefixed GS head keys (is this the InfiniDepth GS checkpoint?)")
        load_state_dict_strict(head, sd, source=f"GS head {path}")
        return head.eval()

    @staticmethod
    def holds(sd: dict) -> bool:
        """Whether the tensors ``sd`` of a file are (or include) the released GS head's."""
        return any(isinstance(k, str) and k.startswith("encoder.gaussian_head.") for k in sd)

    @property
    def token_dim(self) -> int:
        """Width of the ViT tokens it reads."""
        return self.dino_projector[0].in_channels

    @property
    def channels(self) -> int:
        """Raw attributes per pixel: opacity, 2 (unused) offsets, 3 scales, 4 rotation, 3 x 9 SH."""
        return 1 + 2 + 7 + 3 * (self.SH_DEGREE + 1) ** 2

    def attribute_maps(self, image: torch.Tensor, depth: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Raw per-pixel attributes ``[B, 37, H, W]`` from the image ``[B, 3, H, W]``, its depth
        ``[B, 1, H, W]`` and the ViT token map ``[B, C, H/16, W/16]`` (C = ``token_dim``, 1024).
        The released predictor passes the DepthSensor encoder's last-layer tokens from *before* its
        prompt blocks; ``feats.maps[0]`` of our ``InfiniDepth_DepthSensor`` holds them after, so it is
        not the token map this head was trained on."""
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be [B, 3, H, W], got {tuple(image.shape)}")
        B, _, H, W = image.shape
        token_dim = self.token_dim
        if depth.shape != (B, 1, H, W) or tokens.dim() != 4 or tokens.shape[:2] != (B, token_dim):
            raise ValueError(f"depth must be [{B}, 1, {H}, {W}] and tokens [{B}, {token_dim}, h, w], got "
                             f"{tuple(depth.shape)} and {tuple(tokens.shape)}")
        for name, t in (("image", image), ("depth", depth), ("tokens", tokens)):
            if not torch.isfinite(t).all():
                raise ValueError(f"{name} has NaN or infinite values")
        rgb, dep = self.rgb_encoder(image), self.depth_encoder(depth)
        dino = F.interpolate(self.dino_projector(tokens), size=(H, W), mode="bilinear", align_corners=False)
        reg = self.gaussian_regressor(torch.cat([rgb, dep, dino], 1))
        return self.gaussian_head(torch.cat([reg, rgb, dino], 1))

    def at_points(self, maps: torch.Tensor, coords: torch.Tensor, points: torch.Tensor, colors: torch.Tensor) -> Gaussians:
        """Gaussians at ``points [N, 3]`` with ``colors [N, 3]``, attributes sampled from image 0 of
        ``maps [B, 37, H, W]`` at normalised ``(y, x)`` ``coords [N, 2]`` in [-1, 1]."""
        if maps.dim() != 4 or maps.shape[0] == 0 or maps.shape[1] != self.channels:
            raise ValueError(f"maps must be [B, {self.channels}, H, W] (from attribute_maps), got {tuple(maps.shape)}")
        if coords.dim() != 2 or coords.shape[1] != 2:
            raise ValueError(f"coords must be [N, 2] (image 0's points; for a batch [B, N, 2] pass coords[0]), "
                             f"got {tuple(coords.shape)}")
        n = coords.shape[0]
        if n == 0:
            raise ValueError("no points to turn into Gaussians")
        if points.shape != (n, 3) or colors.shape != (n, 3):
            raise ValueError(f"points and colors must be [{n}, 3] like coords [{n}, 2], got {tuple(points.shape)} "
                             f"and {tuple(colors.shape)}")
        if not torch.isfinite(coords).all() or coords.abs().max() > 1:
            raise ValueError("coords must be finite normalised (y, x) positions in [-1, 1]")
        # read inside the outermost pixel centres: a point in the image's outer half-pixel gets its border
        # pixel's attributes, not ones blended with the zero padding (opacity logits and scales pulled to 0)
        inside = clamp_to_pixel_centres(coords, maps.shape[2], maps.shape[3])
        k = (self.SH_DEGREE + 1) ** 2
        m = maps[:1]
        # each pixel's Gaussian first, as the released head makes it; then those attributes are resampled
        # (as the released code does: an opacity halfway between two pixels is the mean of theirs)
        pixel = torch.cat([torch.sigmoid(m[:, :1]), F.softplus(m[:, 3:6] - 4).clamp(1e-10, 5.0), F.normalize(m[:, 6:10], dim=1),
                           m[:, 10:10 + 3 * k]], 1)
        at = bilinear_gather_reference(pixel, inside[None])[0]                      # [N, 1 + 3 + 4 + 3k]
        sh = at[:, 8:].reshape(-1, 3, k) * self.sh_damp
        sh[:, :, 0] = sh[:, :, 0] + rgb_to_sh0(colors)
        return Gaussians(means=points, scales=at[:, 1:4], rotations=F.normalize(at[:, 4:8], dim=-1), opacities=at[:, 0], sh=sh)
