"""Procedural 3D scenes with exact depth at any resolution, rendered by vectorised ray casting.

A :class:`Scene` is a list of primitives (rectangles, boxes, spheres, finite cylinders), each in its
own local frame, with a solid procedural texture, a light and one or more cameras. :func:`generate_scene`
builds one from a seed: a street (ground to the horizon, buildings, poles with wires between them,
fences, trees, a far background or open sky) or a room (the camera inside a box, furniture, slanted
boards, pillars, a grille, hanging cables). Wires and grille bars are sized to be one or two pixels
wide at 4K, so that the ground truth has high-frequency detail that lower resolutions alias.

:func:`render` casts one ray per pixel centre (the convention of ``infinidepth.sampling.camera``:
pixel ``(i, j)`` at ``(u, v) = (j + 0.5, i + 0.5)``; camera x right, y down, z forward) and returns RGB
in [0, 1], z-depth in metres (0 where the ray leaves the scene: sky), camera-frame unit normals facing
the camera, the validity mask, the intrinsics of the requested size and the camera-to-world pose.
World frame: z up, ground at z = 0. Same seed, same size, same device: identical arrays on every run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

RECT, BOX, SPHERE, CYLINDER = 0, 1, 2, 3
SOLID, CHECKER, STRIPES, NOISE, TILES = 0, 1, 2, 3, 4
KINDS = ("street", "room")
EPS_T = 1e-4  # metres: nearest accepted hit, and the shadow ray's offset from its surface


@dataclass
class Primitive:
    """One shape in its local frame: ``world = rotation @ local + centre``.

    ``size``: RECT half extents (x, y) in the local z = 0 plane; BOX half extents; SPHERE radius;
    CYLINDER (radius, half length along local z). Textures are solid (3-D, in local metres), so they
    move with the object and need no surface parameterisation."""

    kind: int
    centre: tuple[float, float, float]
    rotation: np.ndarray
    size: tuple[float, ...]
    color_a: tuple[float, float, float]
    color_b: tuple[float, float, float] = (0.0, 0.0, 0.0)
    pattern: int = SOLID
    scale: float = 1.0
    casts_shadow: bool = True
    grille: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    """RECT only: ``(period_x, period_y, bar_x, bar_y)`` in local metres makes the rectangle a
    grille, solid only on bars of width ``bar`` every ``period`` along x and/or y (0: no bars
    along that axis; all 0: a plain rectangle). Fences, grids and railings are one primitive each."""


@dataclass
class Scene:
    seed: int
    kind: str
    primitives: list[Primitive]
    light: tuple[float, float, float]            # a point light; far away for the sun
    cameras: list[np.ndarray]                    # camera-to-world [4, 4], float64
    fov_x_degrees: float
    sky: bool                                    # rays that hit nothing are sky (invalid depth)
    ambient: float = 0.35
    _packed: dict = field(default_factory=dict, repr=False)

    def intrinsics(self, size: tuple[int, int]) -> np.ndarray:
        """``[3, 3]`` float64 for an ``(H, W)`` image: square pixels, centred principal point."""
        H, W = size
        f = W / 2 / math.tan(math.radians(self.fov_x_degrees) / 2)
        return np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]], dtype=np.float64)

    def packed(self, device) -> dict:
        key = str(device)
        if key not in self._packed:
            self._packed[key] = _pack(self.primitives, device)
        return self._packed[key]


@dataclass
class Render:
    rgb: torch.Tensor            # [H, W, 3] float32 in [0, 1]
    depth: torch.Tensor          # [H, W] float32 z-depth in metres, 0 where invalid
    normals: torch.Tensor        # [H, W, 3] float32 camera frame, unit, facing the camera; 0 where invalid
    valid: torch.Tensor          # [H, W] bool
    intrinsics: torch.Tensor     # [3, 3] float64
    camera_to_world: torch.Tensor  # [4, 4] float64


# -- geometry helpers ---------------------------------------------------------------------------
def _frame(axis) -> np.ndarray:
    """A rotation whose local z is ``axis`` (unit), x and y completing a right-handed frame."""
    z = np.asarray(axis, dtype=np.float64)
    z = z / np.linalg.norm(z)
    helper = np.array([0.0, 0.0, 1.0]) if abs(z[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    x = np.cross(helper, z)
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z], axis=1)


def _rot_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=np.float64)


def _rot_x(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=np.float64)


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-world ``[4, 4]``: camera z towards ``target``, camera y down (against ``up``)."""
    eye = np.asarray(eye, dtype=np.float64)
    f = np.asarray(target, dtype=np.float64) - eye
    f /= np.linalg.norm(f)
    r = np.cross(f, np.asarray(up, dtype=np.float64))
    r /= np.linalg.norm(r)
    T = np.eye(4)
    T[:3, :3] = np.stack([r, np.cross(f, r), f], axis=1)
    T[:3, 3] = eye
    return T


def _pack(prims: list[Primitive], device) -> dict:
    f32 = dict(dtype=torch.float32, device=device)
    size = np.zeros((len(prims), 3))
    for m, p in enumerate(prims):
        size[m, : len(p.size)] = p.size
    return {
        "kind": torch.tensor([p.kind for p in prims], dtype=torch.int64, device=device),
        "centre": torch.tensor(np.array([p.centre for p in prims]), **f32),
        "rotation": torch.tensor(np.array([p.rotation for p in prims]), **f32),
        "size": torch.tensor(size, **f32),
        "color_a": torch.tensor(np.array([p.color_a for p in prims]), **f32),
        "color_b": torch.tensor(np.array([p.color_b for p in prims]), **f32),
        "pattern": torch.tensor([p.pattern for p in prims], dtype=torch.int64, device=device),
        "scale": torch.tensor([p.scale for p in prims], **f32),
        "shadow": torch.tensor([p.casts_shadow for p in prims], dtype=torch.bool, device=device),
        "grille": torch.tensor(np.array([p.grille for p in prims], dtype=np.float64).reshape(-1, 4), **f32),
    }


# -- ray casting ----------------------------------------------------------------------------------
# One primitive at a time, on the rays that can hit it: primary rays inside its projected bounding
# box, shadow rays that pass its bounding sphere. Each test sees local rays o + t d (d unit).
def _nearest_positive(*ts: torch.Tensor) -> torch.Tensor:
    inf = torch.full_like(ts[0], math.inf)
    best = inf
    for t in ts:
        best = torch.minimum(best, torch.where(t > EPS_T, t, inf))
    return best


def _safe(v: torch.Tensor) -> torch.Tensor:
    return torch.where(v.abs() > 1e-12, v, torch.full_like(v, 1e-12))


def _hit_rect(o, d, size, grille):
    t = -o[:, 2] / _safe(d[:, 2])
    x = o[:, 0] + t * d[:, 0]
    y = o[:, 1] + t * d[:, 1]
    solid = (x.abs() <= size[0]) & (y.abs() <= size[1])
    if bool((grille[:2] > 0).any()):
        bars = torch.zeros_like(solid)
        for k, c in ((0, x + size[0]), (1, y + size[1])):
            if grille[k] > 0:
                bars |= torch.remainder(c, grille[k]) < grille[k + 2]
        solid &= bars
    return torch.where(solid & (t > EPS_T), t, torch.full_like(t, math.inf))


def _hit_box(o, d, size, grille):
    inv = 1.0 / _safe(d)
    t0 = (-size - o) * inv
    t1 = (size - o) * inv
    tmin = torch.minimum(t0, t1).amax(-1)
    tmax = torch.maximum(t0, t1).amin(-1)
    t = torch.where(tmin > EPS_T, tmin, tmax)  # from inside (a room): the far wall
    return torch.where((tmax >= tmin) & (t > EPS_T), t, torch.full_like(t, math.inf))


# Spheres and cylinders: the discriminant is r^2 minus the squared distance of the ray's closest
# approach to the centre (axis), taken from that closest point itself. The textbook b^2 - c loses
# |o|^2 * 6e-8 m^2 to float32 rounding, more than r^2 for a 3 mm wire 20 m away.
def _hit_sphere(o, d, size, grille):
    b = (o * d).sum(-1)
    closest = o - b[:, None] * d
    disc = size[0] ** 2 - (closest * closest).sum(-1)
    s = disc.clamp_min(0).sqrt()
    t = _nearest_positive(-b - s, -b + s)
    return torch.where(disc >= 0, t, torch.full_like(t, math.inf))


def _hit_cylinder(o, d, size, grille):
    r, h = size[0], size[1]
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1]
    a_safe = torch.where(a > 1e-12, a, torch.ones_like(a))
    t_closest = -b / a_safe
    cx, cy = o[:, 0] + t_closest * d[:, 0], o[:, 1] + t_closest * d[:, 1]
    disc = r * r - (cx * cx + cy * cy)              # the textbook (b^2 - a c) / a, without the cancellation
    s = (disc.clamp_min(0) / a_safe).sqrt()
    inf = torch.full_like(a, math.inf)
    cands = []
    for sign in (-1.0, 1.0):
        t = t_closest + sign * s
        z = o[:, 2] + t * d[:, 2]
        cands.append(torch.where((disc >= 0) & (a > 1e-12) & (z.abs() <= h), t, inf))
    for sign in (-1.0, 1.0):
        t = (sign * h - o[:, 2]) / _safe(d[:, 2])
        x = o[:, 0] + t * d[:, 0]
        y = o[:, 1] + t * d[:, 1]
        cands.append(torch.where(x * x + y * y <= r * r, t, inf))
    return _nearest_positive(*cands)


_HIT = {RECT: _hit_rect, BOX: _hit_box, SPHERE: _hit_sphere, CYLINDER: _hit_cylinder}


def hit_distance(P: dict, kind: int, m: int, origins: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Distance along unit rays ``[R, 3]`` (origins ``[R, 3]`` or ``[1, 3]``) to primitive ``m`` (inf: miss)."""
    Rm = P["rotation"][m]
    return _HIT[kind]((origins - P["centre"][m]) @ Rm, dirs @ Rm, P["size"][m], P["grille"][m])


def _local_extent(p: Primitive) -> np.ndarray:
    if p.kind == RECT:
        return np.array([p.size[0], p.size[1], 0.0])
    if p.kind == SPHERE:
        return np.full(3, p.size[0])
    if p.kind == CYLINDER:
        return np.array([p.size[0], p.size[0], p.size[1]])
    return np.asarray(p.size, dtype=np.float64)


def _corners(p: Primitive) -> np.ndarray:
    """The 8 world-space corners ``[8, 3]`` of the primitive's local bounding box (corner k: bit i = axis i)."""
    signs = np.array([[(k >> i) & 1 for i in range(3)] for k in range(8)], dtype=np.float64) * 2 - 1
    return (signs * _local_extent(p)) @ np.asarray(p.rotation).T + np.asarray(p.centre)


def _screen_box(p: Primitive, T: np.ndarray, K: np.ndarray, size, near=1e-3):
    """Pixel rows/cols ``(i0, i1, j0, j1)`` (half-open) that the primitive can cover; None if none."""
    H, W = size
    cam = (_corners(p) - T[:3, 3]) @ T[:3, :3]
    pts = [c for c in cam if c[2] >= near]
    for a in range(8):
        for bit in range(3):
            b = a | (1 << bit)
            if b != a and (cam[a, 2] < near) != (cam[b, 2] < near):   # an edge crossing the near plane
                s = (near - cam[a, 2]) / (cam[b, 2] - cam[a, 2])
                pts.append(cam[a] + s * (cam[b] - cam[a]))
    if not pts:
        return None
    pts = np.array(pts)
    u = K[0, 0] * pts[:, 0] / pts[:, 2] + K[0, 2]
    v = K[1, 1] * pts[:, 1] / pts[:, 2] + K[1, 2]
    j0, j1 = int(np.clip(np.floor(u.min() - 0.5) - 1, 0, W)), int(np.clip(np.ceil(u.max() - 0.5) + 2, 0, W))
    i0, i1 = int(np.clip(np.floor(v.min() - 0.5) - 1, 0, H)), int(np.clip(np.ceil(v.max() - 0.5) + 2, 0, H))
    return (i0, i1, j0, j1) if i1 > i0 and j1 > j0 else None


def _bounding_sphere(p: Primitive) -> tuple[np.ndarray, float]:
    return np.asarray(p.centre, dtype=np.float64), float(np.linalg.norm(_local_extent(p)))


def _shadowed(scene: Scene, P: dict, points: torch.Tensor, ldir: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    """Whether the segment from each point towards the light is blocked by a shadow caster."""
    blocked = torch.zeros(points.shape[0], dtype=torch.bool, device=points.device)
    for m, p in enumerate(scene.primitives):
        if not p.casts_shadow:
            continue
        c, r = _bounding_sphere(p)
        v = torch.tensor(c, dtype=points.dtype, device=points.device) - points
        along = (v * ldir).sum(-1)
        near = ((v * v).sum(-1) - along * along <= r * r) & (along >= -r) & (along <= dist + r) & ~blocked
        idx = near.nonzero()[:, 0]
        if idx.numel():
            t = hit_distance(P, p.kind, m, points[idx], ldir[idx])
            blocked[idx] |= t < dist[idx]
    return blocked


def _local_normals(kind, p, size):
    """Outward local normals at local hit points ``p`` ``[R, 3]`` of primitives of ``kind`` per ray."""
    n = torch.zeros_like(p)
    n[:, 2] = 1.0                                                        # RECT
    box = kind == BOX
    if box.any():
        q = p[box] / size[box]
        axis = q.abs().argmax(-1)
        nb = torch.zeros_like(q)
        nb.scatter_(1, axis[:, None], q.gather(1, axis[:, None]).sign())
        n[box] = nb
    sph = kind == SPHERE
    if sph.any():
        n[sph] = p[sph] / size[sph, :1]
    cyl = kind == CYLINDER
    if cyl.any():
        q, s = p[cyl], size[cyl]
        radial = (q[:, 0] ** 2 + q[:, 1] ** 2).sqrt() / s[:, 0]
        cap = (q[:, 2].abs() / s[:, 1]) > radial
        nc = torch.stack([q[:, 0] / s[:, 0], q[:, 1] / s[:, 0], torch.zeros_like(q[:, 0])], -1)
        nc[cap] = torch.stack([torch.zeros_like(q[cap, 0]), torch.zeros_like(q[cap, 0]), q[cap, 2].sign()], -1)
        n[cyl] = nc
    return torch.nn.functional.normalize(n, dim=-1)


# -- textures -------------------------------------------------------------------------------------
def _hash(ix, iy, iz, seed):
    h = (ix * 73856093) ^ (iy * 19349663) ^ (iz * 83492791) ^ (seed * 2654435761)
    for _ in range(2):
        h = h & 0x7FFFFFFF
        h = ((h ^ (h >> 15)) * 1103515245 + 12345) & 0x7FFFFFFF
    return (h & 0xFFFF).float() / 65535.0


def value_noise(p: torch.Tensor, seed: torch.Tensor | int) -> torch.Tensor:
    """Smooth value noise in [0, 1] at points ``p`` ``[R, 3]`` (lattice spacing 1), per-point seed."""
    base = torch.floor(p)
    f = p - base
    w = f * f * (3 - 2 * f)
    i = base.to(torch.int64)
    out = torch.zeros_like(p[:, 0])
    for corner in range(8):
        c = [(corner >> k) & 1 for k in range(3)]
        v = _hash(i[:, 0] + c[0], i[:, 1] + c[1], i[:, 2] + c[2], seed)
        wc = torch.ones_like(out)
        for k in range(3):
            wc = wc * (w[:, k] if c[k] else 1 - w[:, k])
        out = out + wc * v
    return out


def fbm(p: torch.Tensor, seed, octaves: int = 3) -> torch.Tensor:
    total, amp, norm = torch.zeros_like(p[:, 0]), 1.0, 0.0
    for o in range(octaves):
        total = total + amp * value_noise(p * (2.0**o), seed + 101 * o)
        norm += amp
        amp *= 0.5
    return total / norm


def _albedo(P: dict, m: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Texture colour ``[R, 3]`` at local points ``p`` of primitives ``m``."""
    q = p / P["scale"][m, None]
    # The cell patterns read only the coordinates along a flat surface, its normal's one set to 0.5
    # (mid-cell): that one is constant there (a rectangle's local z = 0 up to rounding of either sign,
    # a box face's +-size), so floor() of it flipped checkers at random and, within 0.04 of a whole
    # number of cells, frac() made the whole surface tile grout.
    kind = P["kind"][m]
    across = torch.where(kind == BOX, (p.abs() / P["size"][m].clamp_min(1e-12)).argmax(-1), torch.full_like(kind, 2))
    flat = ((kind == RECT) | (kind == BOX))[:, None] & (torch.arange(3, device=q.device) == across[:, None])
    q_cells = torch.where(flat, torch.full_like(q, 0.5), q)
    cell = torch.floor(q_cells).to(torch.int64)
    pattern = P["pattern"][m]
    seed = m * 7919 + 17
    grain = fbm(q * 4.0, seed)
    mix = torch.zeros_like(q[:, 0])
    mix = torch.where(pattern == CHECKER, (cell.sum(-1) % 2).float(), mix)
    mix = torch.where(pattern == STRIPES, (cell[:, 0] % 2).float(), mix)
    mix = torch.where(pattern == NOISE, fbm(q, seed + 3), mix)
    frac = q_cells - torch.floor(q_cells)
    edge = torch.minimum(frac, 1 - frac).amin(-1)
    mix = torch.where(pattern == TILES, (edge < 0.04).float(), mix)
    a, b = P["color_a"][m], P["color_b"][m]
    color = a + (b - a) * mix[:, None]
    return (color * (0.85 + 0.3 * grain[:, None])).clamp(0, 1)


def _sky(dirs_world: torch.Tensor) -> torch.Tensor:
    up = dirs_world[:, 2].clamp(-1, 1)
    horizon = torch.tensor([0.85, 0.88, 0.92], device=dirs_world.device)
    zenith = torch.tensor([0.35, 0.55, 0.85], device=dirs_world.device)
    t = up.clamp_min(0).sqrt()[:, None]
    return horizon + (zenith - horizon) * t


# -- rendering ------------------------------------------------------------------------------------
def render(scene: Scene, size: tuple[int, int], view: int = 0, device="cpu", shadows: bool = True,
           band_rays: int = 1 << 20) -> Render:
    """Render view ``view`` of ``scene`` at ``size = (H, W)``, ``band_rays`` rays at a time (memory).

    See the module docstring for what comes back."""
    H, W = (int(v) for v in size)
    if H <= 0 or W <= 0:
        raise ValueError(f"render size must be positive, got {size}")
    if not 0 <= view < len(scene.cameras):
        raise ValueError(f"view {view} out of range: the scene has {len(scene.cameras)} cameras")
    device = torch.device(device)
    P = scene.packed(device)
    K = scene.intrinsics((H, W))
    T = scene.cameras[view]
    R_cw = torch.tensor(T[:3, :3], dtype=torch.float32, device=device)
    eye = torch.tensor(T[:3, 3], dtype=torch.float32, device=device)[None]
    light = torch.tensor(scene.light, dtype=torch.float32, device=device)
    boxes = [_screen_box(p, T, K, (H, W)) for p in scene.primitives]

    rgb = torch.empty(H, W, 3, device=device)
    depth = torch.zeros(H, W, device=device)
    normals = torch.zeros(H, W, 3, device=device)
    rows_per_band = max(1, band_rays // W)
    x = ((torch.arange(W, device=device, dtype=torch.float64) + 0.5) - K[0, 2]) / K[0, 0]
    for r0 in range(0, H, rows_per_band):
        r1 = min(H, r0 + rows_per_band)
        y = ((torch.arange(r0, r1, device=device, dtype=torch.float64) + 0.5) - K[1, 2]) / K[1, 1]
        ray_cam = torch.stack([x.expand(r1 - r0, W), y[:, None].expand(r1 - r0, W), torch.ones(r1 - r0, W, device=device,
                                                                                              dtype=torch.float64)], -1).float()
        norm = ray_cam.norm(dim=-1)
        dirs = (ray_cam / norm[..., None]) @ R_cw.T                         # [h, W, 3] world
        best_t = torch.full((r1 - r0, W), math.inf, device=device)
        best_m = torch.full((r1 - r0, W), -1, dtype=torch.int64, device=device)
        for m, (p, box) in enumerate(zip(scene.primitives, boxes)):
            if box is None or box[1] <= r0 or box[0] >= r1:
                continue
            i0, i1, j0, j1 = max(box[0], r0) - r0, min(box[1], r1) - r0, box[2], box[3]
            t = hit_distance(P, p.kind, m, eye, dirs[i0:i1, j0:j1].reshape(-1, 3)).view(i1 - i0, j1 - j0)
            closer = t < best_t[i0:i1, j0:j1]
            best_t[i0:i1, j0:j1] = torch.where(closer, t, best_t[i0:i1, j0:j1])
            best_m[i0:i1, j0:j1] = torch.where(closer, m, best_m[i0:i1, j0:j1])
        dirs, best_t, best_m, norm = dirs.reshape(-1, 3), best_t.reshape(-1), best_m.reshape(-1), norm.reshape(-1)
        hit = best_m >= 0
        color = _sky(dirs)
        band_depth = torch.zeros_like(best_t)
        band_normals = torch.zeros_like(dirs)
        if hit.any():
            th, mh, dh = best_t[hit], best_m[hit], dirs[hit]
            pw = eye + th[:, None] * dh
            Rm = P["rotation"][mh]
            p_local = torch.einsum("rk,rkj->rj", pw - P["centre"][mh], Rm)
            n_world = torch.einsum("rjk,rk->rj", Rm, _local_normals(P["kind"][mh], p_local, P["size"][mh]))
            n_world = torch.where(((n_world * dh).sum(-1, keepdim=True) > 0), -n_world, n_world)
            to_light = light - pw
            dist = to_light.norm(dim=-1)
            ldir = to_light / dist[:, None]
            lambert = (n_world * ldir).sum(-1).clamp_min(0)
            if shadows:
                lit = lambert > 0
                shadow = torch.zeros_like(lit)
                shadow[lit] = _shadowed(scene, P, pw[lit] + 10 * EPS_T * n_world[lit], ldir[lit], dist[lit])
                lambert = torch.where(shadow, torch.zeros_like(lambert), lambert)
            shade = scene.ambient + (1 - scene.ambient) * lambert
            color[hit] = (_albedo(P, mh, p_local) * shade[:, None]).clamp(0, 1)
            band_depth[hit] = th / norm[hit]                                 # along the ray -> z
            band_normals[hit] = n_world @ R_cw                               # world -> camera
        rgb[r0:r1] = color.view(r1 - r0, W, 3)
        depth[r0:r1] = band_depth.view(r1 - r0, W)
        normals[r0:r1] = band_normals.view(r1 - r0, W, 3)
    return Render(rgb=rgb, depth=depth, normals=normals, valid=depth > 0,
                  intrinsics=torch.tensor(K, dtype=torch.float64), camera_to_world=torch.tensor(T, dtype=torch.float64))


# -- scene generation -----------------------------------------------------------------------------
ALONG_Y = np.array([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]])    # local x -> world y, local y -> up: a wall along y
FACING_Y = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # local x -> world x, local y -> up: faces the camera


def _color(rng, lo=0.1, hi=0.9):
    return tuple(float(v) for v in rng.uniform(lo, hi, 3))


def _material(rng) -> dict:
    pattern = int(rng.choice([SOLID, CHECKER, STRIPES, NOISE, TILES], p=[0.15, 0.2, 0.2, 0.3, 0.15]))
    return dict(color_a=_color(rng), color_b=_color(rng), pattern=pattern, scale=float(rng.uniform(0.1, 1.0)))


def _wire(rng, a, b, radius, color=(0.08, 0.08, 0.08)) -> Primitive:
    a, b = np.asarray(a, float), np.asarray(b, float)
    length = float(np.linalg.norm(b - a))
    return Primitive(CYLINDER, tuple((a + b) / 2), _frame(b - a), (radius, length / 2), color)


def _thin_radius(rng, distance: float, fov_x: float) -> float:
    """A radius that is 1 to 2 pixels wide at ``distance`` in a 3840-pixel-wide image."""
    f4k = 3840 / 2 / math.tan(math.radians(fov_x) / 2)
    return float(rng.uniform(1.0, 2.0)) * distance / f4k / 2


def _street(rng, fov) -> tuple[list[Primitive], tuple, np.ndarray, bool]:
    prims = [Primitive(RECT, (0, 150, 0), np.eye(3), (300, 300), (0.3, 0.3, 0.32), (0.45, 0.45, 0.45), NOISE, 2.0, casts_shadow=False)]
    road = float(rng.uniform(3.0, 6.0))
    prims.append(Primitive(RECT, (0, 150, 0.002), np.eye(3), (0.08, 300), (0.9, 0.9, 0.85), casts_shadow=False))  # centre line
    for side in (-1, 1):
        y = float(rng.uniform(2, 8))
        while y < 120:                                                     # buildings
            w, depth_, h = rng.uniform(6, 18), rng.uniform(6, 15), rng.uniform(4, 30)
            x = side * (road + 2 + rng.uniform(0, 4) + depth_ / 2)
            prims.append(Primitive(BOX, (x, y + w / 2, h / 2), _rot_z(rng.uniform(-0.05, 0.05)), (depth_ / 2, w / 2, h / 2),
                                   **_material(rng)))
            y += w + rng.uniform(0.5, 6)
        px = side * (road + 0.6)
        tops, y = [], float(rng.uniform(3, 8))
        while y < 80:                                                      # poles, wires between their tops
            hgt = float(rng.uniform(5, 8))
            r = float(rng.uniform(0.06, 0.14))
            prims.append(Primitive(CYLINDER, (px, y, hgt / 2), np.eye(3), (r, hgt / 2), (0.35, 0.33, 0.3), (0.2, 0.2, 0.2), STRIPES, 0.5))
            tops.append((px, y, hgt - 0.2))
            y += float(rng.uniform(12, 25))
        for a, b in zip(tops, tops[1:]):
            dist = max(0.5 * (a[1] + b[1]), 3.0)
            for k in range(int(rng.integers(1, 4))):
                dz = -0.35 * k
                prims.append(_wire(rng, (a[0], a[1], a[2] + dz), (b[0], b[1], b[2] + dz), _thin_radius(rng, dist, fov)))
        if rng.random() < 0.7:                                             # a fence: thin bars, two rails
            y0, length = float(rng.uniform(4, 10)), float(rng.uniform(6, 20))
            fh = float(rng.uniform(0.8, 1.6))
            bar = 2 * _thin_radius(rng, y0 + length / 2, fov) * float(rng.uniform(1, 3))
            prims.append(Primitive(RECT, (side * (road + 1.2), y0 + length / 2, fh / 2), ALONG_Y, (length / 2, fh / 2),
                                   _color(rng, 0.05, 0.4), grille=(float(rng.uniform(0.08, 0.2)), fh - 0.05, bar, 0.05)))
    for _ in range(int(rng.integers(2, 6))):                               # trees
        x = float(rng.choice([-1, 1]) * (road + rng.uniform(1.5, 3)))
        y, h = float(rng.uniform(6, 60)), float(rng.uniform(2, 4))
        prims.append(Primitive(CYLINDER, (x, y, h / 2), np.eye(3), (0.15, h / 2), (0.35, 0.25, 0.15), (0.25, 0.18, 0.1), NOISE, 0.2))
        prims.append(Primitive(SPHERE, (x, y, h + 1.0), np.eye(3), (float(rng.uniform(1, 2.2)),), (0.15, 0.45, 0.15),
                               (0.3, 0.6, 0.2), NOISE, 0.3))
    for _ in range(int(rng.integers(2, 6))):                               # objects on the road
        y, s = float(rng.uniform(5, 40)), float(rng.uniform(0.3, 1.5))
        x = float(rng.uniform(-road + s, road - s))
        if rng.random() < 0.5:
            prims.append(Primitive(BOX, (x, y, s), _rot_z(rng.uniform(0, math.pi)), (s, s * rng.uniform(0.5, 2), s), **_material(rng)))
        else:
            prims.append(Primitive(SPHERE, (x, y, s), np.eye(3), (s,), **_material(rng)))
    if rng.random() < 0.5:                                                 # a slanted board
        y = float(rng.uniform(6, 20))
        prims.append(Primitive(RECT, (float(rng.uniform(-road, road)), y, 1.0), _rot_z(rng.uniform(-1, 1)) @ _rot_x(rng.uniform(0.3, 1.2)),
                               (float(rng.uniform(0.8, 2)), 1.2), **_material(rng)))
    sky = bool(rng.random() < 0.5)
    if not sky:                                                            # far background: a dome
        prims.append(Primitive(SPHERE, (0, 0, 0), np.eye(3), (float(rng.uniform(250, 600)),), (0.55, 0.6, 0.7),
                               (0.8, 0.82, 0.85), NOISE, 40.0, casts_shadow=False))
    sun = np.array([rng.uniform(-1, 1), rng.uniform(-1, 0.5), rng.uniform(0.4, 1.2)])
    light = tuple(1e5 * sun / np.linalg.norm(sun))
    eye = np.array([rng.uniform(-road / 2, road / 2), 0.0, rng.uniform(1.2, 2.2)])
    target = eye + np.array([rng.uniform(-0.3, 0.3), 1.0, rng.uniform(-0.12, 0.02)])
    return prims, light, look_at(eye, target), sky


def _room(rng, fov) -> tuple[list[Primitive], tuple, np.ndarray, bool]:
    L, Wd, Ht = float(rng.uniform(7, 14)), float(rng.uniform(5, 10)), float(rng.uniform(2.6, 3.6))
    # The camera and the light are inside the room box: its walls never shadow anything.
    prims = [Primitive(BOX, (0, L / 2, Ht / 2), np.eye(3), (Wd / 2, L / 2, Ht / 2), **_material(rng), casts_shadow=False)]
    prims.append(Primitive(RECT, (0, L / 2, 0.003), np.eye(3), (Wd / 2 - 0.01, L / 2 - 0.01), _color(rng), _color(rng), TILES,
                           float(rng.uniform(0.3, 0.8)), casts_shadow=False))
    clear = 2.0
    for _ in range(int(rng.integers(3, 8))):                               # furniture
        sx, sy, sz = rng.uniform(0.2, 1.0), rng.uniform(0.2, 1.0), rng.uniform(0.2, 1.0)
        x = float(rng.uniform(-Wd / 2 + sx, Wd / 2 - sx))
        y = float(rng.uniform(clear + sy, L - sy))
        prims.append(Primitive(BOX, (x, y, sz), _rot_z(rng.uniform(0, math.pi)), (sx, sy, sz), **_material(rng)))
    for _ in range(int(rng.integers(1, 4))):                               # balls
        r = float(rng.uniform(0.15, 0.6))
        prims.append(Primitive(SPHERE, (float(rng.uniform(-Wd / 2 + r, Wd / 2 - r)), float(rng.uniform(clear + r, L - r)), r),
                               np.eye(3), (r,), **_material(rng)))
    for _ in range(int(rng.integers(1, 3))):                               # pillars floor to ceiling
        r = float(rng.uniform(0.1, 0.3))
        prims.append(Primitive(CYLINDER, (float(rng.uniform(-Wd / 2 + r, Wd / 2 - r)), float(rng.uniform(clear + r, L - r)), Ht / 2),
                               np.eye(3), (r, Ht / 2), **_material(rng)))
    for _ in range(int(rng.integers(1, 3))):                               # boards leaning at an angle
        prims.append(Primitive(RECT, (float(rng.uniform(-Wd / 3, Wd / 3)), float(rng.uniform(clear + 1, L - 1)), 0.9),
                               _rot_z(rng.uniform(-1.5, 1.5)) @ _rot_x(rng.uniform(0.2, 1.3)), (float(rng.uniform(0.4, 1.2)), 0.9),
                               **_material(rng)))
    gy, gx = float(rng.uniform(clear + 2, L - 0.5)), float(rng.uniform(-Wd / 4, Wd / 4))   # a grille of thin bars
    bar = 2 * _thin_radius(rng, gy, fov) * float(rng.uniform(1, 2.5))
    step = float(rng.uniform(0.04, 0.12))
    prims.append(Primitive(RECT, (gx, gy, float(rng.uniform(0.9, 1.6))), FACING_Y, (float(rng.uniform(0.5, 1.2)), float(rng.uniform(0.4, 0.8))),
                           _color(rng, 0.05, 0.5), grille=(step, 4 * step, bar, bar)))
    for _ in range(int(rng.integers(2, 5))):                               # cables from the ceiling
        a = (float(rng.uniform(-Wd / 2, Wd / 2)), float(rng.uniform(clear, L)), Ht)
        b = (a[0] + float(rng.uniform(-1, 1)), a[1] + float(rng.uniform(-1, 1)), float(rng.uniform(0.5, Ht - 0.5)))
        prims.append(_wire(rng, a, b, _thin_radius(rng, a[1], fov)))
    light = (float(rng.uniform(-Wd / 4, Wd / 4)), float(rng.uniform(1, L - 1)), Ht - 0.3)
    eye = np.array([rng.uniform(-Wd / 4, Wd / 4), 0.6, rng.uniform(1.1, 1.9)])
    target = eye + np.array([rng.uniform(-0.3, 0.3), 1.0, rng.uniform(-0.3, 0.05)])
    return prims, light, look_at(eye, target), False


def generate_scene(seed: int, kind: str | None = None, views: int = 1, baseline: float = 0.3) -> Scene:
    """A random scene from ``seed`` (numpy's PCG64: identical on every platform and run).

    ``views`` cameras: the first is the source view; the others are moved by up to ``baseline``
    metres sideways and up/down and turned by up to 5 degrees in yaw and in pitch, for novel-view work."""
    if views < 1:
        raise ValueError(f"views must be at least 1, got {views}")
    rng = np.random.default_rng(seed)
    kind = kind or str(rng.choice(KINDS))
    if kind not in KINDS:
        raise ValueError(f"unknown scene kind {kind!r}; choose from {KINDS}")
    fov = float(rng.uniform(50, 80))
    prims, light, camera, sky = (_street if kind == "street" else _room)(rng, fov)
    cameras = [camera]
    for _ in range(views - 1):
        T = camera.copy()
        shift = np.array([rng.uniform(-1, 1), rng.uniform(-0.3, 0.3), 0.0]) * baseline
        T[:3, 3] = camera[:3, 3] + camera[:3, :3] @ shift
        yaw, pitch = np.radians(rng.uniform(-5, 5, 2))
        T[:3, :3] = camera[:3, :3] @ _rot_x(pitch) @ _rot_y(yaw)
        cameras.append(T)
    return Scene(seed=seed, kind=kind, primitives=prims, light=light, cameras=cameras, fov_x_degrees=fov, sky=sky)


def _rot_y(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=np.float64)


# -- files: the layout of `infinidepth data render` -------------------------------------------------
FORMAT = "infinidepth-procedural/1"
# What a seed renders to. Raised with every change that alters the arrays of a seed, so that a set is
# never continued by a renderer that draws its scenes differently. 2 (2026-12-07): exact hits on thin
# spheres and cylinders, checker and tile textures from the coordinates along a surface.
RENDERER = 2
LAYOUT = """\
# A procedural depth set (infinidepth data render)

index.json                      how the set was made: format, renderer version, size [H, W], scenes, views,
                                seed, baseline
scene_NNNNNN/                   one scene; its seed is seed + NNNNNN
  view_VV_rgb.png               8-bit RGB (the shaded colour x 255, no sRGB curve), H x W
  view_VV_depth.exr             float32 channel Z: z-depth in metres, 0 where the ray leaves the scene (sky)
  view_VV_normal.exr            half-float RGB: unit normals in the camera frame (x right, y down, z forward)
  view_VV_camera.json           intrinsics [3x3] in pixels (pixel (i, j) centred at (j + 0.5, i + 0.5)),
                                camera_to_world [4x4] (world: z up, metres), kind, fov_x_degrees;
                                written last, so a view with a camera.json is complete

Read it with infinidepth.data.ProceduralFiles(root) or infinidepth.data.procedural.load_view(camera_json).
"""


def save_view(r: Render, folder: Path, view: int, scene: Scene) -> None:
    """Write one rendered view in the layout above, each file atomically, the camera last."""
    import OpenEXR

    from infinidepth.io import atomic_path, write_png

    folder = Path(folder)
    stem = f"view_{view:02d}"
    write_png(folder / f"{stem}_rgb.png", (r.rgb.cpu().numpy() * 255).round().astype(np.uint8))
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    for name, channels in ((f"{stem}_depth.exr", {"Z": r.depth.cpu().numpy().astype(np.float32)}),
                           (f"{stem}_normal.exr", {"RGB": r.normals.cpu().numpy().astype(np.float16)})):
        with atomic_path(folder / name) as tmp, OpenEXR.File(header, channels) as f:
            f.write(str(tmp))
    meta = {"intrinsics": r.intrinsics.tolist(), "camera_to_world": r.camera_to_world.tolist(),
            "size": list(r.depth.shape), "kind": scene.kind, "seed": scene.seed, "fov_x_degrees": scene.fov_x_degrees}
    with atomic_path(folder / f"{stem}_camera.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=1))


def load_view(camera_json, normals: bool = True) -> dict:
    """One view of a written set: ``rgb`` uint8, ``depth`` float32, ``intrinsics``, ``camera_to_world``,
    and ``normals`` when asked for (and the view has them; ``normals=False`` does not open the file)."""
    import OpenEXR

    from infinidepth.io import read_depth, read_image

    camera_json = Path(camera_json)
    stem = camera_json.name[: -len("_camera.json")]
    meta = json.loads(camera_json.read_text())
    out = {"rgb": read_image(camera_json.with_name(f"{stem}_rgb.png")),
           "depth": read_depth(camera_json.with_name(f"{stem}_depth.exr")),
           "intrinsics": np.array(meta["intrinsics"], dtype=np.float64),
           "camera_to_world": np.array(meta["camera_to_world"], dtype=np.float64)}
    normal = camera_json.with_name(f"{stem}_normal.exr")
    if normals and normal.is_file():
        with OpenEXR.File(str(normal)) as f:
            out["normals"] = np.asarray(f.channels()["RGB"].pixels, dtype=np.float32)
    return out


def list_rendered(root) -> list[Path]:
    """The complete views (their camera.json files) of a set written by :func:`render_set`."""
    root = Path(root)
    index = root / "index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{root} is not a procedural set: no index.json")
    if json.loads(index.read_text()).get("format") != FORMAT:
        raise ValueError(f"{index}: not a {FORMAT} index")
    return sorted(root.glob("scene_*/view_*_camera.json"))


def render_set(out, scenes: int, size: tuple[int, int], views: int = 1, seed: int = 0, baseline: float = 0.3,
               device="cpu", progress: bool = True) -> dict:
    """Render ``scenes`` scenes of ``views`` views each into ``out`` (layout: :data:`LAYOUT`).

    Resumable: views already complete are kept, and a set can be grown by asking for more scenes;
    a folder that holds a set made with other settings is refused, as is any other non-empty folder."""
    from tqdm import tqdm

    from infinidepth.io import atomic_path

    from infinidepth.sampling.camera import check_size

    out = Path(out)
    if scenes <= 0 or views <= 0:
        raise ValueError(f"scenes and views must be positive, got {scenes} and {views}")
    size = check_size(size, "render size")   # before index.json records it
    index = {"format": FORMAT, "renderer": RENDERER, "size": [int(size[0]), int(size[1])], "scenes": int(scenes),
             "views": int(views), "seed": int(seed), "baseline": float(baseline)}
    if (out / "index.json").is_file():
        try:
            old = json.loads((out / "index.json").read_text())
        except ValueError as e:   # not JSON, not UTF-8
            raise ValueError(f"{out / 'index.json'} is not a {FORMAT} index ({e}); choose another folder") from None
        if not isinstance(old, dict) or old.get("format") != FORMAT:   # another tool's index: its folder is not ours
            raise ValueError(f"{out / 'index.json'} is not a {FORMAT} index; choose another folder")
        rendered = any(out.glob("scene_*/view_*_camera.json"))  # a run that failed before its first view left only the index
        made_by = old.get("renderer", 1)   # (sets from before the version was recorded: 1)
        if rendered and made_by != RENDERER:
            raise ValueError(f"{out} was rendered by renderer version {made_by}, and this is version {RENDERER}, which "
                             "draws the same seeds differently: finish it with the version that began it, or choose "
                             "another folder (its views stay readable as they are)")
        if rendered and {k: v for k, v in old.items() if k != "scenes"} != {k: v for k, v in index.items() if k != "scenes"}:
            raise ValueError(f"{out} already holds a different procedural set ({old}); choose another folder")
        if rendered:  # asking for fewer scenes renders none but never shrinks what the index says is there
            index["scenes"] = max(int(scenes), int(old.get("scenes", 0)))
    elif out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a folder; choose another --out")
    elif out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty and holds no procedural set; choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "index.json") as tmp:
        tmp.write_text(json.dumps(index, indent=1))
    with atomic_path(out / "README.md") as tmp:
        tmp.write_text(LAYOUT)
    done = skipped = 0
    for k in tqdm(range(scenes), desc="rendering scenes", unit="scene", disable=not progress):
        folder = out / f"scene_{k:06d}"
        todo = [v for v in range(views) if not (folder / f"view_{v:02d}_camera.json").is_file()]
        skipped += views - len(todo)
        if not todo:
            continue
        scene = generate_scene(seed + k, views=views, baseline=baseline)
        for v in todo:
            save_view(render(scene, size, view=v, device=device), folder, v, scene)
            done += 1
    return {"rendered": done, "kept": skipped, "index": index}
