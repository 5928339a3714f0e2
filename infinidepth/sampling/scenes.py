"""Analytic scenes of bounded planes, for measuring samplers against exact geometry.

Each scene has a source camera (pinhole, pose) and answers, exactly and differentiably, "what is
the z-depth at this normalised query?" (a ray cast), so a sampler can be run on a known field and
its points compared. :func:`standard_scenes` are the three cases of the uniformity report: a plane
at a grazing angle, a corridor, and a ground plane running towards the horizon.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .camera import rays

INF = float("inf")


@dataclass
class Plane:
    """Points ``P`` with ``normal . P = offset`` and ``lo <= P <= hi`` (world frame)."""

    normal: tuple[float, float, float]
    offset: float
    lo: tuple[float, float, float] = (-INF, -INF, -INF)
    hi: tuple[float, float, float] = (INF, INF, INF)


@dataclass
class AnalyticScene:
    name: str
    planes: list[Plane]
    size: tuple[int, int] = (240, 320)
    fov_x_degrees: float = 60.0
    camera_to_world: torch.Tensor = field(default_factory=lambda: torch.eye(4, dtype=torch.float64))

    @property
    def intrinsics(self) -> torch.Tensor:
        H, W = self.size
        f = W / 2 / math.tan(math.radians(self.fov_x_degrees) / 2)
        return torch.tensor([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]], dtype=torch.float64)

    def raycast(self, origins: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
        """Smallest ``t > 0`` with ``origins + t dirs`` on a plane ``[N]`` (inf: no hit). Differentiable."""
        best = torch.full(dirs.shape[:-1], INF, dtype=dirs.dtype, device=dirs.device)
        for p in self.planes:
            n = torch.tensor(p.normal, dtype=dirs.dtype, device=dirs.device)
            denom = (dirs * n).sum(-1)
            safe = torch.where(denom.abs() > 1e-12, denom, torch.ones_like(denom))
            t = (p.offset - (origins * n).sum(-1)) / safe
            hit = origins + t[..., None] * dirs
            lo = torch.tensor(p.lo, dtype=dirs.dtype, device=dirs.device)
            hi = torch.tensor(p.hi, dtype=dirs.dtype, device=dirs.device)
            tol = 1e-9 * (1 + hit.detach().abs())
            inside = ((hit >= lo - tol) & (hit <= hi + tol)).all(-1)
            ok = (denom.abs() > 1e-12) & (t > 1e-9) & inside & (t < best)
            best = torch.where(ok, t, best)
        return best

    def depth(self, coords: torch.Tensor) -> torch.Tensor:
        """Source-camera z-depth at normalised ``coords`` ``[1, N, 2]`` -> ``[1, N]`` (0: no surface)."""
        T = self.camera_to_world.to(coords.dtype)
        r = rays(coords, self.intrinsics[None].to(coords.dtype), self.size)  # z = 1, so t is the z-depth
        t = self.raycast(T[:3, 3].expand_as(r), r @ T[:3, :3].T)
        return torch.where(torch.isfinite(t), t, torch.zeros_like(t))

    def depth_and_grad(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Depth and its exact derivative with respect to (y, x) (autograd through the ray cast)."""
        c = coords.detach().double().requires_grad_(True)
        with torch.enable_grad():
            d = self.depth(c)
            (g,) = torch.autograd.grad(d.sum(), c)
        return d.detach(), g

    def moved_view_target(self, baseline: float) -> torch.Tensor:
        """``[H, W]`` bool: pixels of the camera moved by ``baseline`` along its x axis that see surface
        also visible from the source camera (so points sampled from the source can cover them)."""
        from infinidepth.ops import grid_coords

        H, W = self.size
        K = self.intrinsics
        T = self.camera_to_world
        R, C = T[:3, :3], T[:3, 3]
        C_moved = C + R @ torch.tensor([baseline, 0.0, 0.0], dtype=torch.float64)
        r = rays(grid_coords(H, W).double(), K[None], self.size)[0]
        t = self.raycast(C_moved.expand_as(r), r @ R.T)
        hit = C_moved + t[:, None] * (r @ R.T)
        p = (hit - C) @ R  # source camera frame
        u = K[0, 0] * p[:, 0] / p[:, 2] + K[0, 2]
        v = K[1, 1] * p[:, 1] / p[:, 2] + K[1, 2]
        seen = torch.isfinite(t) & (p[:, 2] > 0) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
        back = self.raycast(C.expand_as(p), (p / p[:, 2:3].clamp_min(1e-12)) @ R.T)  # z-depth from the source
        seen &= (back - p[:, 2]).abs() <= 1e-6 * p[:, 2].abs().clamp_min(1.0)
        return seen.reshape(H, W)


def _pitched_down(degrees: float) -> torch.Tensor:
    """Camera-to-world pose looking down by ``degrees`` (y down, z forward), at the origin."""
    a = math.radians(degrees)
    T = torch.eye(4, dtype=torch.float64)
    T[:3, :3] = torch.tensor([[1, 0, 0], [0, math.cos(a), math.sin(a)], [0, -math.sin(a), math.cos(a)]], dtype=torch.float64)
    return T


def standard_scenes(size: tuple[int, int] = (240, 320)) -> list[AnalyticScene]:
    a = math.radians(55)
    tilted = AnalyticScene("tilted plane", [Plane((math.sin(a), 0.0, -math.cos(a)), -6 * math.cos(a))], size)
    L = 25.0
    corridor = AnalyticScene("corridor", [
        Plane((0, 1, 0), 1.5, (-1.5, -INF, 0), (1.5, INF, L)),    # floor, 1.5 below the camera
        Plane((0, 1, 0), -1.0, (-1.5, -INF, 0), (1.5, INF, L)),   # ceiling
        Plane((1, 0, 0), -1.5, (-INF, -1.0, 0), (INF, 1.5, L)),   # left wall
        Plane((1, 0, 0), 1.5, (-INF, -1.0, 0), (INF, 1.5, L)),    # right wall
        Plane((0, 0, 1), L, (-1.5, -1.0, -INF), (1.5, 1.5, INF)),  # far end
    ], size)
    ground = AnalyticScene("ground to the horizon", [Plane((0, 1, 0), 1.6, (-60, -INF, 0), (60, INF, 80))], size,
                           camera_to_world=_pitched_down(12.0))
    return [tilted, corridor, ground]
