"""Rendering Gaussians: gsplat's rasteriser on a GPU, a C++ one on the CPU (``csrc/gs_composite_cpu.cpp``,
forward only), and the plain-PyTorch reference anywhere (differentiable: GS-head training renders
through it).

All follow the same model (the 3DGS / gsplat "classic" rasteriser): each Gaussian is projected with
the local affine approximation of the pinhole (EWA splatting), its 2-D covariance dilated by 0.3 px²
(anti-aliasing low-pass), composited front to back by camera depth with
``alpha = min(0.999, opacity * exp(-d^T S^-1 d / 2))``, contributions below 1/255 skipped and a pixel
finished once its transmittance falls below 1e-4. Colours come from the spherical harmonics in the
viewing direction (``max(0, 0.5 + SH)``). Pixel ``(i, j)`` is sampled at its centre ``(j + 0.5, i + 0.5)``.

Cameras: ``world_to_camera [4, 4]``, rigid (a rotation and a translation), OpenCV axes: x right, y down,
z forward; ``K [3, 3]`` in pixels; ``size`` two whole numbers ``(H, W)``; ``background`` three numbers.
Returned: ``rgb [H, W, 3]``, ``depth [H, W]`` (expected depth of the visible Gaussians, 0 where none)
and ``alpha [H, W]`` (accumulated opacity; ``1 - alpha`` is what shows through: holes).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from infinidepth.sampling.camera import check_intrinsics, check_size

from .gaussians import Gaussians, covariances

SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154, -0.4570457994644658,
         1.445305721320277, -0.5900435899266435)
C0 = 0.28209479177387814
EPS2D, ALPHA_MIN, T_MIN, ALPHA_MAX, NEAR = 0.3, 1.0 / 255.0, 1e-4, 0.999, 0.01


def eval_sh(sh: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Colour ``[N, 3]`` of coefficients ``sh [N, 3, K]`` (K = 1, 4, 9 or 16) towards unit ``dirs [N, 3]``."""
    K = sh.shape[-1]
    out = C0 * sh[..., 0]
    if K > 1:
        x, y, z = (dirs[:, i:i + 1] for i in range(3))
        out = out - SH_C1 * y * sh[..., 1] + SH_C1 * z * sh[..., 2] - SH_C1 * x * sh[..., 3]
        if K > 4:
            xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
            out = (out + SH_C2[0] * xy * sh[..., 4] + SH_C2[1] * yz * sh[..., 5]
                   + SH_C2[2] * (2 * zz - xx - yy) * sh[..., 6] + SH_C2[3] * xz * sh[..., 7]
                   + SH_C2[4] * (xx - yy) * sh[..., 8])
            if K > 9:
                out = (out + SH_C3[0] * y * (3 * xx - yy) * sh[..., 9] + SH_C3[1] * xy * z * sh[..., 10]
                       + SH_C3[2] * y * (4 * zz - xx - yy) * sh[..., 11]
                       + SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * sh[..., 12]
                       + SH_C3[4] * x * (4 * zz - xx - yy) * sh[..., 13] + SH_C3[5] * z * (xx - yy) * sh[..., 14]
                       + SH_C3[6] * x * (xx - 3 * yy) * sh[..., 15])
    return (out + 0.5).clamp_min(0)


def check_camera(world_to_camera, K, size) -> tuple[torch.Tensor, torch.Tensor]:
    """``world_to_camera`` a rigid ``[4, 4]`` transform (a rotation, within 1e-4, and a translation;
    bottom row ``[0, 0, 0, 1]``), ``K`` pinhole intrinsics, ``size`` ``(height, width)``."""
    Kt = check_intrinsics(K, 1, dtype=torch.float64)[0]
    T = torch.as_tensor(world_to_camera, dtype=torch.float64)
    if T.shape != (4, 4):
        raise ValueError(f"world_to_camera must be a [4, 4] matrix, got {tuple(T.shape)}")
    if not torch.isfinite(T).all():
        raise ValueError("world_to_camera has NaN or infinite values")
    R = T[:3, :3]
    err, det = float((R @ R.T - torch.eye(3, dtype=torch.float64)).abs().max()), float(torch.linalg.det(R))
    if err > 1e-4 or det < 0:
        raise ValueError(f"world_to_camera must be rigid: its top-left 3x3 is not a rotation (max |R R^T - I| = {err:.3g}, "
                         f"det {det:.3g}; no scaling, shearing or mirroring)")
    if (T[3] - torch.tensor([0.0, 0, 0, 1], dtype=torch.float64)).abs().max() > 1e-4:
        raise ValueError(f"world_to_camera's bottom row must be [0, 0, 0, 1], got {T[3].tolist()}")
    check_size(size, "image size")
    return T, Kt


def check_background(background) -> torch.Tensor:
    """The background colour: three finite numbers (r, g, b) -> float64 ``[3]``."""
    try:
        bg = torch.as_tensor(background, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"background must be three numbers (r, g, b), got {background!r}") from None
    if bg.shape != (3,):
        raise ValueError(f"background must be three numbers (r, g, b), got shape {tuple(bg.shape)}")
    if not torch.isfinite(bg).all():
        raise ValueError(f"background has NaN or infinite values: {bg.tolist()}")
    return bg


def project(g: Gaussians, world_to_camera, K, size):
    """Screen means ``[N, 2]`` (x, y pixels), inverse 2-D covariances ``[N, 2, 2]``, depths ``[N]``,
    colours ``[N, 3]`` and a visibility mask ``[N]`` (on or in front of the near plane: gsplat culls
    only depths below it, so a Gaussian exactly at it is drawn by every backend)."""
    T, Kt = check_camera(world_to_camera, K, size)
    H, W = size
    dev, dt = g.means.device, g.means.dtype
    T, Kt = T.to(dev, dt), Kt.to(dev, dt)
    R, t = T[:3, :3], T[:3, 3]
    p = g.means @ R.T + t
    z = p[:, 2]
    visible = z >= NEAR
    zs = torch.where(visible, z, torch.ones_like(z))
    fx, fy, cx, cy = Kt[0, 0], Kt[1, 1], Kt[0, 2], Kt[1, 2]
    # As gsplat: the Jacobian is taken at x/z, y/z clamped to the image's extent plus 30% of its
    # half field of view, so Gaussians far off-screen do not blow up.
    mx, my = 0.3 * 0.5 * W / fx, 0.3 * 0.5 * H / fy
    tx = torch.minimum(torch.maximum(p[:, 0] / zs, -(cx / fx + mx)), (W - cx) / fx + mx) * zs
    ty = torch.minimum(torch.maximum(p[:, 1] / zs, -(cy / fy + my)), (H - cy) / fy + my) * zs
    J = torch.zeros(len(g), 2, 3, device=dev, dtype=dt)
    J[:, 0, 0] = fx / zs
    J[:, 0, 2] = -fx * tx / zs**2
    J[:, 1, 1] = fy / zs
    J[:, 1, 2] = -fy * ty / zs**2
    cov_cam = R @ covariances(g) @ R.T
    eye = torch.eye(2, device=dev, dtype=dt)
    cov2d = J @ cov_cam @ J.transpose(1, 2) + EPS2D * eye
    # Gaussians behind the near plane are never drawn: their footprint (which may not be invertible) is left out
    all_visible = bool(visible.all())
    conic, info = torch.linalg.inv_ex(cov2d if all_visible else torch.where(visible[:, None, None], cov2d, eye))
    with torch.no_grad():
        fine = bool((info == 0).all() & torch.isfinite(cov2d).all() & torch.isfinite(conic).all())   # the usual case
        bad = visible & ((info != 0) | ~torch.isfinite(cov2d).all(2).all(1) | ~torch.isfinite(conic).all(2).all(1)) \
            if not fine else None
        if bad is not None and bad.any():
            i = int(bad.nonzero()[0, 0])
            scales = ", ".join(f"{v:.3g}" for v in g.scales[i].tolist())
            raise ValueError(f"Gaussian {i} ({int(bad.sum())} in all) is too large to project in "
                             f"{str(dt).removeprefix('torch.')}: with scales {scales} at depth {float(z[i]):.3g} its screen footprint is beyond the "
                             "dtype's range or precision; use float64 or smaller scales")
    mean2d = torch.stack([fx * p[:, 0] / zs + cx, fy * p[:, 1] / zs + cy], -1)
    centre = -R.T @ t
    dirs = torch.nn.functional.normalize(g.means - centre, dim=-1)
    colors = eval_sh(g.sh, dirs)
    return mean2d, conic, z, colors, visible


def bin_tiles(mean2d: torch.Tensor, conic: torch.Tensor, z: torch.Tensor, visible: torch.Tensor, size, tile: int):
    """Each ``tile x tile`` block's Gaussians, front to back: ``(g_of, per_tile, first)`` with tile ``t``'s
    list ``g_of[first[t]:first[t] + per_tile[t]]`` (tiles in row-major order).

    A Gaussian joins every tile its footprint can reach: a Mahalanobis radius of sqrt(2 ln 255),
    beyond which alpha < 1/255 for any opacity, so the culling changes nothing."""
    H, W = size
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile <= 0:
        raise ValueError(f"tile must be a positive whole number of pixels, got {tile!r}")
    dev = mean2d.device
    # The footprint's largest 2-D standard deviation is 1 / sqrt(the conic's smallest eigenvalue), taken
    # as det / largest (no cancellation), in float64 and without squaring the entries: huge Gaussians
    # (scales of 1e9 m at 3 m) keep a finite radius instead of overflowing float32 to NaN and vanishing.
    # A conic that is not positive definite (rounding, for extreme shapes) joins every tile.
    a, b, c = (conic[:, i, j].detach().double() for i, j in ((0, 0), (0, 1), (1, 1)))
    largest = 0.5 * (a + c) + torch.hypot(0.5 * (a - c), b)
    smallest = (a * c - b * b) / largest
    radius = torch.where(smallest > 0, torch.sqrt(2 * math.log(255.0) / smallest), torch.full_like(a, math.inf))
    TY, TX = math.ceil(H / tile), math.ceil(W / tile)
    x0 = ((mean2d[:, 0] - radius) / tile).floor().clamp(0, TX).long()
    x1 = ((mean2d[:, 0] + radius) / tile).floor().clamp(-1, TX - 1).long()
    y0 = ((mean2d[:, 1] - radius) / tile).floor().clamp(0, TY).long()
    y1 = ((mean2d[:, 1] + radius) / tile).floor().clamp(-1, TY - 1).long()
    keep = visible & (x1 >= x0) & (y1 >= y0) & torch.isfinite(mean2d).all(1)      # (a centre beyond float range: off-screen)
    idx = keep.nonzero()[:, 0]
    idx = idx.index_select(0, depth_order(z.detach().index_select(0, idx)))       # front to back
    x0, y0 = x0.index_select(0, idx), y0.index_select(0, idx)
    nx, ny = x1.index_select(0, idx) - x0 + 1, y1.index_select(0, idx) - y0 + 1
    count = nx * ny
    pairs = int(count.sum())
    it = torch.int32 if max(pairs, TY * TX) <= torch.iinfo(torch.int32).max else torch.int64
    # every (tile, Gaussian) pair, made front to back: pair p is idx[of[p]]'s k-th tile (row-major in its box),
    # k = p - start[of[p]]; its tile is (y0 + k // nx) * TX + x0 + k % nx = p + (y0 * TX + x0 - start) + k // nx * (TX - nx)
    start = torch.cumsum(count, 0) - count
    of = torch.repeat_interleave(torch.arange(len(idx), device=dev, dtype=it), count, output_size=pairs)
    p = torch.arange(pairs, device=dev, dtype=it)
    dy = torch.div(p - start.to(it).index_select(0, of), nx.to(it).index_select(0, of), rounding_mode="floor")
    tiles = p + (y0 * TX + x0 - start).to(it).index_select(0, of) + dy * (TX - nx).to(it).index_select(0, of)
    # then one stable sort by tile: each tile's list stays front to back (equal depths by index)
    tiles, order = torch.sort(tiles, stable=True)
    g_of = idx.index_select(0, of.index_select(0, order))
    per_tile = torch.bincount(tiles, minlength=TY * TX)
    first = torch.cumsum(per_tile, 0) - per_tile
    return g_of, per_tile, first


def depth_order(z: torch.Tensor) -> torch.Tensor:
    """``torch.argsort(z, stable=True)``, faster where every depth is positive (as the visible ones are):
    positive floats order as their bit patterns do, and integers sort by radix."""
    bits = {torch.float32: torch.int32, torch.float64: torch.int64}.get(z.dtype)
    if bits is None or not bool((z > 0).all()):
        return torch.argsort(z, stable=True)
    return torch.sort(z.contiguous().view(bits), stable=True)[1]


def render_cpp(g: Gaussians, world_to_camera, K, size: tuple[int, int], background=(0.0, 0.0, 0.0),
               tile: int = 16) -> dict:
    """The C++ CPU rasteriser (``csrc/gs_composite_cpu.cpp``): the same projection and tiles as
    :func:`render_torch`, then each pixel walks its tile's list front to back and stops where the
    reference's weights become zero for good (transmittance below 1e-4). Forward only: no gradients."""
    H, W = check_size(size, "image size")
    bg = check_background(background).to(g.means.dtype)
    mean2d, conic, z, colors, visible = project(g, world_to_camera, K, (H, W))
    g_of, per_tile, first = bin_tiles(mean2d, conic, z, visible, (H, W), tile)
    rgb, depth, alpha = torch.ops.infinidepth.gs_composite(mean2d, conic, g.opacities, colors, z, first, per_tile, g_of,
                                                           H, W, tile, bg)
    return {"rgb": rgb, "depth": depth, "alpha": alpha}


def render_torch(g: Gaussians, world_to_camera, K, size: tuple[int, int], background=(0.0, 0.0, 0.0),
                 tile: int = 16, budget: int = 1 << 24) -> dict:
    """The plain-PyTorch rasteriser (any device, differentiable): the reference.

    Tiles of ``tile x tile`` pixels each composite only the Gaussians whose footprint can reach them
    (:func:`bin_tiles`), every (pixel, Gaussian) pair of the tile evaluated, batched so that about
    ``budget`` pairs are in flight."""
    H, W = check_size(size, "image size")
    dev, dt = g.means.device, g.means.dtype
    bg = check_background(background).to(dev, dt)
    mean2d, conic, z, colors, visible = project(g, world_to_camera, K, (H, W))
    g_of, per_tile, first = bin_tiles(mean2d, conic, z, visible, (H, W), tile)
    TY, TX = math.ceil(H / tile), math.ceil(W / tile)

    rgb = bg.expand(TY * TX, tile * tile, 3).clone()
    depth = torch.zeros(TY * TX, tile * tile, device=dev, dtype=dt)
    alpha = torch.zeros(TY * TX, tile * tile, device=dev, dtype=dt)
    ly, lx = torch.meshgrid(torch.arange(tile, device=dev, dtype=dt), torch.arange(tile, device=dev, dtype=dt), indexing="ij")
    local = torch.stack([lx.reshape(-1), ly.reshape(-1)], -1) + 0.5                 # pixel centres in a tile
    busy = (per_tile > 0).nonzero()[:, 0]
    busy = busy[torch.argsort(per_tile[busy])]                                      # similar lengths batch together
    start = 0
    while start < len(busy):
        m = int(per_tile[busy[start]])
        n_t = 1
        while start + n_t < len(busy) and (n_t + 1) * tile * tile * int(per_tile[busy[start + n_t]]) <= budget:
            n_t += 1
        batch = busy[start:start + n_t]
        m = int(per_tile[batch].max())
        slot = torch.arange(m, device=dev)
        valid = slot[None] < per_tile[batch, None]                                  # [T, M]
        gi = g_of[(first[batch, None] + slot[None]).clamp_max(len(g_of) - 1)]     # [T, M]
        origin = torch.stack([(batch % TX) * tile, (batch // TX) * tile], -1).to(dt)
        d = (origin[:, None, :] + local[None]).unsqueeze(2) - mean2d[gi].unsqueeze(1)   # [T, P, M, 2]
        cg = conic[gi].unsqueeze(1)
        power = -0.5 * (cg[..., 0, 0] * d[..., 0] ** 2 + cg[..., 1, 1] * d[..., 1] ** 2
                        + 2 * cg[..., 0, 1] * d[..., 0] * d[..., 1])
        a = (g.opacities[gi].unsqueeze(1) * torch.exp(power.clamp_max(0))).clamp_max(ALPHA_MAX)
        a = torch.where((a >= ALPHA_MIN) & (power <= 0) & valid.unsqueeze(1), a, torch.zeros_like(a))
        before = torch.cumprod(torch.cat([torch.ones_like(a[..., :1]), 1 - a[..., :-1]], -1), -1)
        # a pixel stops at the Gaussian that would take its transmittance below T_MIN (that one excluded)
        alive = torch.cumprod((before * (1 - a) >= T_MIN).to(dt), -1)
        w = a * before * alive
        acc = w.sum(-1)
        rgb[batch] = torch.einsum("tpm,tmc->tpc", w, colors[gi]) + (1 - acc)[..., None] * bg
        depth[batch] = torch.where(acc > 0, torch.einsum("tpm,tm->tp", w, z[gi]) / acc.clamp_min(1e-12), torch.zeros_like(acc))
        alpha[batch] = acc
        start += n_t

    def image(x):
        x = x.reshape(TY, TX, tile, tile, *x.shape[2:]).transpose(1, 2).reshape(TY * tile, TX * tile, *x.shape[2:])
        return x[:H, :W]

    return {"rgb": image(rgb), "depth": image(depth), "alpha": image(alpha)}


def render_gsplat(g: Gaussians, world_to_camera, K, size: tuple[int, int], background=(0.0, 0.0, 0.0)) -> dict:
    """gsplat's CUDA rasteriser (needs a GPU and the gsplat package), same outputs as :func:`render_torch`."""
    if not g.means.is_cuda:
        raise ValueError(f"backend gsplat needs CUDA tensors (the Gaussians are on {g.means.device})")
    H, W = check_size(size, "image size")
    T, Kt = check_camera(world_to_camera, K, (H, W))
    bg = check_background(background)
    from gsplat import rasterization

    dev = g.means.device
    colors, alphas, _ = rasterization(
        means=g.means.float(), quats=g.rotations.float(), scales=g.scales.float(), opacities=g.opacities.float(),
        colors=g.sh.transpose(1, 2).contiguous().float(), viewmats=T[None].to(dev, torch.float32),
        Ks=Kt[None].to(dev, torch.float32), width=W, height=H, sh_degree=g.degree, near_plane=NEAR,
        render_mode="RGB+ED", backgrounds=bg.to(dev, torch.float32)[None],
        eps2d=EPS2D, packed=False)
    return {"rgb": colors[0, ..., :3], "depth": colors[0, ..., 3] * (alphas[0, ..., 0] > 0), "alpha": alphas[0, ..., 0]}


def render(g: Gaussians, world_to_camera, K, size, background=(0.0, 0.0, 0.0), backend: str = "auto") -> dict:
    """``backend``: ``"gsplat"`` (GPU), ``"cpp"`` (CPU, no gradients), ``"torch"`` (the reference), or
    ``"auto"``: gsplat for GPU tensors when installed, on the CPU ``cpp`` unless gradients are wanted."""
    if len(g) == 0:
        raise ValueError("no Gaussians to render")
    g.validate()  # fields changed since construction (a NaN from a step, a negative scale) are named here
    if backend == "auto":
        backend = "torch"
        if g.means.is_cuda:
            try:
                import gsplat  # noqa: F401

                backend = "gsplat"
            except ImportError:
                pass
        elif g.means.device.type == "cpu" and cpp_available() and not wants_grad(g):
            backend = "cpp"
    if backend == "gsplat":
        return render_gsplat(g, world_to_camera, K, size, background)
    if backend == "cpp":
        if g.means.device.type != "cpu" or not cpp_available():
            raise ValueError("backend 'cpp' needs CPU tensors and the compiled extension infinidepth._C")
        if wants_grad(g):
            raise ValueError("backend 'cpp' has no gradients; render with backend='torch' to train through it")
        return render_cpp(g, world_to_camera, K, size, background)
    if backend == "torch":
        return render_torch(g, world_to_camera, K, size, background)
    raise ValueError(f"backend must be 'auto', 'gsplat', 'cpp' or 'torch', got {backend!r}")


def cpp_available() -> bool:
    from infinidepth.ops import available_backends

    return "cpp" in available_backends(torch.device("cpu"))


def wants_grad(g: Gaussians) -> bool:
    return torch.is_grad_enabled() and any(
        t.requires_grad for t in (g.means, g.scales, g.rotations, g.opacities, g.sh))
