"""The depth query strategy: normals of the field, surface-area weights and samples, the released
triangle sampler, the uniformity measures and model.sample_points.

Expected values come from geometry worked out independently of the code: analytic planes and a
sphere, the area of a plane patch from its corner rays, counts on hand-sized grids.
"""

import math

import numpy as np
import pytest
import torch

import infinidepth
from infinidepth.ops import available_backends, grid_coords
from infinidepth.sampling import (backproject, hole_fraction, knn_spacing, surface_area_sample, surface_area_weights,
                                  surface_normals, triangle_area_sample, uniformity)
from infinidepth.sampling.scenes import AnalyticScene, Plane, standard_scenes

KERNEL_BACKENDS = [b for b in available_backends("cpu") if b != "torch"]


def K_of(f, H, W):
    return torch.tensor([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]], dtype=torch.float64)


def dense_field(scene):
    H, W = scene.size
    depth, grad = scene.depth_and_grad(grid_coords(H, W).double())
    return depth.reshape(1, 1, H, W), grad.reshape(1, H, W, 2).permute(0, 3, 1, 2)


def tilted_plane(degrees, size=(30, 40), distance=5.0):
    a = math.radians(degrees)
    return AnalyticScene("tilted", [Plane((math.sin(a), 0.0, -math.cos(a)), -distance * math.cos(a))], size, fov_x_degrees=50)


# -- normals -------------------------------------------------------------------------------------


@pytest.mark.parametrize("degrees", [0, 30, 55])
def test_normals_of_planes(degrees):
    scene = tilted_plane(degrees)
    depth, grad = dense_field(scene)
    n = surface_normals(depth, grad, scene.intrinsics)
    a = math.radians(degrees)
    want = torch.tensor([math.sin(a), 0.0, -math.cos(a)], dtype=torch.float64)  # faces the camera (z < 0)
    torch.testing.assert_close(n, want.view(1, 3, 1, 1).expand_as(n), atol=1e-9, rtol=0)


def test_normals_of_a_sphere():
    """z-depth of a sphere in front of the camera, in closed form; its normal is (P - centre) / radius."""
    H, W = 24, 32
    K = K_of(30.0, H, W)
    centre, radius = torch.tensor([0.2, -0.1, 4.0], dtype=torch.float64), 1.5
    coords = grid_coords(H, W).double().requires_grad_(True)
    r = torch.stack([((coords[..., 1] + 1) * W / 2 - W / 2) / 30.0, ((coords[..., 0] + 1) * H / 2 - H / 2) / 30.0,
                     torch.ones_like(coords[..., 0])], -1)
    a = (r * r).sum(-1)
    b = -2 * (r * centre).sum(-1)
    c = (centre * centre).sum() - radius**2
    disc = b * b - 4 * a * c
    z = torch.where(disc > 0, (-b - disc.clamp_min(0).sqrt()) / (2 * a), torch.zeros_like(a))
    (g,) = torch.autograd.grad(z.sum(), coords)
    depth = z.detach().reshape(1, 1, H, W)
    n = surface_normals(depth, g.reshape(1, H, W, 2).permute(0, 3, 1, 2), K)
    P = backproject(depth.reshape(1, -1), grid_coords(H, W).double(), K[None], (H, W))[0]
    want = ((P - centre) / radius).T.reshape(1, 3, H, W)
    hit = depth > 0
    assert hit.sum() > 100
    torch.testing.assert_close(n[hit.expand_as(n)], want[hit.expand_as(want)], atol=1e-7, rtol=0)
    assert (n[~hit.expand_as(n)] == 0).all()


def test_normals_reject_bad_input():
    depth, grad = torch.ones(1, 1, 4, 5), torch.zeros(1, 2, 4, 5)
    with pytest.raises(ValueError, match="focal lengths must be positive"):
        surface_normals(depth, grad, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="grad must have shape"):
        surface_normals(depth, torch.zeros(1, 2, 4, 4), K_of(4, 4, 5))
    bad = depth.clone()
    bad[0, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        surface_normals(bad, grad, K_of(4, 4, 5))
    with pytest.raises(ValueError, match="no skew"):
        surface_normals(depth, grad, torch.tensor([[4.0, 1.0, 2.5], [0, 4, 2], [0, 0, 1]]))
    with pytest.raises(TypeError, match="grad must be a tensor .B, 2, H, W., got NoneType"):
        surface_normals(depth, None, K_of(4, 4, 5))   # (was an AttributeError from inside)
    with pytest.raises(TypeError, match="depth must be a tensor"):
        surface_normals(depth.numpy(), grad, K_of(4, 4, 5))


# -- weights and the sampler -------------------------------------------------------------------


def plane_patch_area(scene):
    """Area of the part of a (single, unbounded) plane that the image rectangle sees: the corner
    rays' hits form a planar quadrilateral."""
    H, W = scene.size
    K = scene.intrinsics
    corners = [(0, 0), (0, W), (H, W), (H, 0)]
    rays = [torch.tensor([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], 1.0], dtype=torch.float64) for v, u in corners]
    t = [scene.raycast(torch.zeros(1, 3, dtype=torch.float64), r[None])[0] for r in rays]
    P = [ti * r for ti, r in zip(t, rays)]
    return 0.5 * (torch.linalg.cross(P[2] - P[0], P[3] - P[1])).norm().item()


@pytest.mark.parametrize("degrees", [0, 40, 60])
def test_weights_are_the_surface_area_each_pixel_sees(degrees):
    scene = tilted_plane(degrees, size=(60, 80), distance=4.0)
    depth, grad = dense_field(scene)
    n = surface_normals(depth, grad, scene.intrinsics)
    w = surface_area_weights(depth, n, scene.intrinsics, eps=1e-12)
    assert w.sum().item() == pytest.approx(plane_patch_area(scene), rel=3e-3)  # midpoint rule over the pixels


def test_weights_clamp_the_tilt_of_grazing_pixels_to_eps():
    """A surface seen edge-on at every pixel of a wide camera (normals at right angles to each ray):
    the tilt is clamped to eps, so each pixel weighs d^2 cos(alpha) / (eps fx fy), with cos(alpha)
    the ray's angle to the optical axis (below 0.5 in a corner here); and at random tilts
    d^2 cos(alpha) / (max(|n . v|, eps) fx fy), worked out per pixel in numpy."""
    H, W, eps = 9, 12, 0.05
    K = np.array([[4.0, 0, 5.5], [0, 5.0, 4.0], [0, 0, 1]])
    v, u = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
    r = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    ray = r / np.linalg.norm(r, axis=-1, keepdims=True)
    d = np.random.default_rng(0).uniform(0.5, 3.0, (H, W))
    edge_on = np.cross(ray, [0.0, 1.0, 0.0])
    edge_on /= np.linalg.norm(edge_on, axis=-1, keepdims=True)
    tilted = np.random.default_rng(1).normal(size=(H, W, 3))
    tilted /= np.linalg.norm(tilted, axis=-1, keepdims=True)
    for normals in (edge_on, tilted):
        want = d**2 * ray[..., 2] / (np.maximum(np.abs((normals * ray).sum(-1)), eps) * K[0, 0] * K[1, 1])
        got = surface_area_weights(torch.from_numpy(d)[None, None], torch.from_numpy(normals).permute(2, 0, 1)[None],
                                   torch.from_numpy(K), eps=eps)
        np.testing.assert_allclose(got[0].numpy(), want, rtol=1e-12)
    assert ray[..., 2].min() < 0.5


def test_fronto_parallel_plane_gets_uniform_samples():
    scene = tilted_plane(0, size=(12, 16))
    depth, grad = dense_field(scene)
    n = surface_normals(depth, grad, scene.intrinsics)
    w = surface_area_weights(depth, n, scene.intrinsics)
    torch.testing.assert_close(w, torch.full_like(w, w.mean().item()), rtol=1e-12, atol=0)
    coords = surface_area_sample(depth, n, scene.intrinsics, 12 * 16 * 5, seed=1, jitter=False)
    rows = ((coords[0, :, 0] + 1) / 2 * 12).floor().long()
    cols = ((coords[0, :, 1] + 1) / 2 * 16).floor().long()
    counts = torch.bincount(rows * 16 + cols, minlength=12 * 16)
    assert counts.min() == 5 and counts.max() == 5


def test_hilbert_order_visits_every_cell_once_in_steps_to_a_neighbour():
    from infinidepth.sampling.surface import hilbert_order

    for side in (1, 2, 8, 32):
        order = hilbert_order(side, side)
        assert torch.equal(order.sort().values, torch.arange(side * side))
        y, x = order // side, order % side
        assert bool(((y.diff().abs() + x.diff().abs()) == 1).all())      # one pixel at a time, never a jump
    for h, w in ((3, 5), (12, 16), (7, 1)):
        assert torch.equal(hilbert_order(h, w).sort().values, torch.arange(h * w))


def _hilbert_distance(x: int, y: int, side: int) -> int:
    """Position of cell (x, y) along the Hilbert curve of a side x side square, one cell at a time:
    each level's quadrant gives two digits, then the cell is carried into that quadrant's frame."""
    d, s = 0, side // 2
    while s:
        rx, ry = int(x & s > 0), int(y & s > 0)
        d += s * s * ((3 * rx) ^ ry)
        if not ry:
            if rx:
                x, y = side - 1 - x, side - 1 - y
            x, y = y, x
        s //= 2
    return d


@pytest.mark.parametrize("h, w", [(1, 1), (1, 6), (5, 1), (3, 5), (8, 8), (12, 16), (13, 9), (17, 33), (64, 40)])
def test_hilbert_order_is_the_curve_cut_to_the_grid(h, w):
    """Against the curve's distance worked out cell by cell (the order is built level by level, with
    quadrants outside the grid dropped): at sizes that are and are not powers of two or multiples of
    the quadrants, where the drop is skipped."""
    from infinidepth.sampling.surface import hilbert_order

    side = 1 << max(0, math.ceil(math.log2(max(h, w))))
    want = sorted(range(h * w), key=lambda i: _hilbert_distance(i % w, i // w, side))
    assert hilbert_order(h, w).tolist() == want


def _uniform_plane(h: int, w: int):
    depth = torch.full((1, 1, h, w), 3.0)
    normals = torch.zeros(1, 3, h, w)
    normals[:, 2] = -1
    return depth, normals, torch.tensor([[float(w), 0, w / 2], [0, float(w), h / 2], [0, 0, 1]])


@pytest.mark.parametrize("backend", available_backends("cpu"))
def test_samples_are_stratified_in_2d_at_any_density(backend):
    """Row by row, a quarter of a sample per pixel of a plane went to every fourth pixel of every row
    (columns of samples, splats with holes between them), and several samples in one pixel were
    jittered independently (clumps). Along the Hilbert curve each aligned 2x2 block of pixels gets
    one sample of four; with four per pixel, each gets one in every quarter of the pixel."""
    depth, normals, K = _uniform_plane(16, 24)
    sparse = surface_area_sample(depth, normals, K, 16 * 24 // 4, seed=3, backend=backend)[0]
    i, j = ((sparse[:, 0] + 1) / 2 * 16).floor().long(), ((sparse[:, 1] + 1) / 2 * 24).floor().long()
    assert torch.equal(torch.bincount((i // 2) * 12 + j // 2, minlength=8 * 12), torch.ones(8 * 12, dtype=torch.int64))
    dense = surface_area_sample(depth, normals, K, 16 * 24 * 4, seed=3, backend=backend)[0]
    i, j = ((dense[:, 0] + 1) / 2 * 32).floor().long(), ((dense[:, 1] + 1) / 2 * 48).floor().long()  # half pixels
    assert torch.equal(torch.bincount(i * 48 + j, minlength=32 * 48), torch.ones(32 * 48, dtype=torch.int64))


def test_inverse_cdf_order_returns_the_cells_of_the_layout():
    """Weights laid out in another order sample the same cells as the identity layout's positions
    map to, and each coordinate lies in its returned cell."""
    from infinidepth.ops.inverse_cdf import inverse_cdf_sample

    g = torch.Generator().manual_seed(0)
    w = torch.rand(2, 5, 7, generator=g)
    order = torch.randperm(35, generator=g)
    plain_coords, plain_cells = inverse_cdf_sample(w.reshape(2, 35)[:, order].reshape(2, 5, 7), 300, seed=1)
    coords, cells = inverse_cdf_sample(w.reshape(2, 35)[:, order].reshape(2, 5, 7), 300, seed=1, order=order)
    assert torch.equal(cells, order[plain_cells])
    i, j = ((coords[..., 0] + 1) / 2 * 5).floor().long(), ((coords[..., 1] + 1) / 2 * 7).floor().long()
    assert torch.equal(i * 7 + j, cells)
    same = inverse_cdf_sample(w, 300, seed=1, order=torch.arange(35))
    torch.testing.assert_close(same[0], inverse_cdf_sample(w, 300, seed=1)[0], rtol=0, atol=0)
    for bad in (torch.arange(34), torch.arange(35).int(), [0] * 35):
        with pytest.raises(ValueError, match="order must be an int64 tensor"):
            inverse_cdf_sample(w, 10, order=bad)


def test_grazing_plane_sample_density_follows_the_area():
    """On a plane at a grazing angle the samples per pixel follow d^2 cos(alpha) / cos(theta): per
    column of the image, the ratio of counts matches the ratio of the analytic pixel areas."""
    H, W = 20, 60
    scene = tilted_plane(60, size=(H, W), distance=3.0)
    depth, grad = dense_field(scene)
    n = surface_normals(depth, grad, scene.intrinsics)
    total = 400_000
    coords = surface_area_sample(depth, n, scene.intrinsics, total, seed=0, eps=1e-9)
    cols = ((coords[0, :, 1] + 1) / 2 * W).floor().long()
    got = torch.bincount(cols, minlength=W).double() / total
    # analytic: hit point of each pixel centre ray, area = d^2 cos(alpha) / (f^2 cos(theta))
    K = scene.intrinsics
    u = torch.arange(W, dtype=torch.float64) + 0.5
    v = torch.arange(H, dtype=torch.float64) + 0.5
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    r = torch.stack([(uu - K[0, 2]) / K[0, 0], (vv - K[1, 2]) / K[1, 1], torch.ones_like(uu)], -1)
    a = math.radians(60)
    normal = torch.tensor([math.sin(a), 0.0, -math.cos(a)], dtype=torch.float64)
    d = (-3.0 * math.cos(a)) / (r @ normal)
    unit = r / r.norm(dim=-1, keepdim=True)
    area = d**2 * unit[..., 2] / (unit @ normal).abs() / K[0, 0] ** 2
    want = area.sum(0) / area.sum()
    # stratified placement: each pixel gets its expected count give or take one sample
    assert (got - want).abs().max().item() <= (H + 1) / total
    assert want[-1] / want[0] > 5  # the far side of the plane really gets many more samples


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_sampler_backends_agree(backend):
    scene = standard_scenes((24, 32))[1]
    depth, grad = dense_field(scene)
    n = surface_normals(depth, grad, scene.intrinsics)
    want = surface_area_sample(depth, n, scene.intrinsics, 3000, seed=4, backend="torch")
    got = surface_area_sample(depth, n, scene.intrinsics, 3000, seed=4, backend=backend)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_sampler_rejects_bad_input():
    depth = torch.ones(1, 1, 6, 8)
    normals = torch.zeros(1, 3, 6, 8)
    normals[:, 2] = -1
    K = K_of(8, 6, 8)
    bad = depth.clone()
    bad[0, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        surface_area_sample(bad, normals, K, 10)
    with pytest.raises(ValueError, match="focal lengths must be positive"):
        surface_area_sample(depth, normals, torch.zeros(3, 3), 10)
    with pytest.raises(ValueError, match="positive"):
        surface_area_sample(depth, normals, K, 0)
    with pytest.raises(ValueError, match="limit"):
        surface_area_sample(depth, normals, K, 10**12)
    with pytest.raises(ValueError, match="no surface"):
        surface_area_sample(torch.zeros_like(depth), normals, K, 10)
    with pytest.raises(ValueError, match="normals must have shape"):
        surface_area_sample(depth, normals[:, :, :5], K, 10)
    with pytest.raises(ValueError, match="intrinsics are given for 2 images"):
        surface_area_sample(depth, normals, torch.stack([K, K]), 10)


# -- the released triangle sampler ---------------------------------------------------------------


def test_triangle_sampler_centroids_on_a_flat_map():
    """3x3 pixels at depth 1: 8 equal triangles; with n = 8 the deterministic mode returns their
    centroids (pixel units: one third of the way across each half of a 2x2 block)."""
    K = K_of(3.0, 3, 3)
    coords = triangle_area_sample(torch.ones(1, 1, 3, 3), K, 8)
    rows = ((coords[0, :, 0].double() + 1) / 2 * 3 - 0.5).numpy()
    cols = ((coords[0, :, 1].double() + 1) / 2 * 3 - 0.5).numpy()
    got = sorted(zip(np.round(rows * 3).astype(int).tolist(), np.round(cols * 3).astype(int).tolist()))
    want = []
    for i in range(2):
        for j in range(2):
            want.append((3 * i + 1, 3 * j + 1))  # (tl, bl, tr) centroid = (i + 1/3, j + 1/3)
            want.append((3 * i + 2, 3 * j + 2))  # (br, tr, bl) centroid = (i + 2/3, j + 2/3)
    assert got == sorted(want)


def test_triangle_sampler_extra_points_follow_sqrt_area():
    """n > number of triangles: every centroid once, the rest shared in proportion to sqrt(area)."""
    K = K_of(4.0, 5, 5)
    depth = torch.ones(1, 1, 5, 5)
    depth[..., 3:, :] = 1.02  # a small step, below the pruning ratio: bigger triangles there
    coords = triangle_area_sample(depth, K, 32 + 100)
    assert coords.shape == (1, 132, 2)
    assert coords.abs().max() <= 1


def test_triangle_sampler_prunes_discontinuities_and_the_far_plane():
    H, W = 8, 10
    K = K_of(8.0, H, W)
    depth = torch.full((1, 1, H, W), 2.0)
    depth[..., :, 5:] = 4.0  # a step: triangles across columns 4|5 are pruned
    coords = triangle_area_sample(depth, K, 400)
    px = (coords[0, :, 1] + 1) / 2 * W - 0.5  # pixel-centre units
    assert not ((px > 4.0) & (px < 5.0)).any()
    far = torch.full((1, 1, H, W), 2.0)
    far[..., :, 5:] = 95.0  # beyond the release's 90 cut
    px = (triangle_area_sample(far, K, 400, depth_ratio_far=100.0, depth_ratio=99.0)[0, :, 1] + 1) / 2 * W - 0.5
    assert (px <= 4.0).all()
    with pytest.raises(ValueError, match="every triangle was pruned"):
        triangle_area_sample(torch.zeros(1, 1, H, W), K, 10)


@pytest.mark.parametrize("deterministic", [True, False])
def test_triangle_sampler_names_areas_that_vanish_or_overflow(deterministic):
    """Depth whose 3D triangle areas underflow to 0 (or overflow) in float64: the shares and
    probabilities were NaN, and torch failed inside repeat_interleave or multinomial."""
    K = K_of(4.0, 4, 6)
    for depth, max_depth in [(1e-170, 90.0), (1e200, None)]:
        with pytest.raises(ValueError, match="3D areas sum to"):
            triangle_area_sample(torch.full((1, 1, 4, 6), depth, dtype=torch.float64), K, 100, max_depth=max_depth,
                                 deterministic=deterministic, seed=0)


def test_triangle_random_mode_is_seeded():
    K = K_of(8.0, 6, 7)
    depth = torch.rand(1, 1, 6, 7) * 0.01 + 3
    a = triangle_area_sample(depth, K, 300, deterministic=False, seed=3)
    b = triangle_area_sample(depth, K, 300, deterministic=False, seed=3)
    c = triangle_area_sample(depth, K, 300, deterministic=False, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_triangle_random_mode_draws_triangles_in_proportion_to_their_area():
    """Two fronto-parallel halves at depth 2 and 4, the same number of triangles each (the column
    between them is pruned as a discontinuity): a triangle's 3D area goes with depth squared, so
    4 / (4 + 16) of the draws land on the near half. (The draw is an inverse CDF over the areas,
    not torch.multinomial, which refuses more than 2**24 triangles.)"""
    depth = torch.full((1, 1, 6, 8), 4.0, dtype=torch.float64)
    depth[..., :4] = 2.0
    coords = triangle_area_sample(depth, K_of(8.0, 6, 8), 40_000, deterministic=False, seed=0)[0]
    near = (coords[:, 1] < 0).double().mean().item()
    assert abs(near - 0.2) < 0.01 and not ((coords[:, 1] > -0.125) & (coords[:, 1] < 0.125)).any()


# -- uniformity measures -------------------------------------------------------------------------


def test_knn_spacing_of_a_lattice_and_of_random_points():
    g = np.stack(np.meshgrid(np.arange(30.0), np.arange(30.0), indexing="ij"), -1).reshape(-1, 2)
    lattice = np.concatenate([g, np.zeros((len(g), 1))], 1)
    s = knn_spacing(lattice, k=4)
    interior = (g[:, 0] > 0) & (g[:, 0] < 29) & (g[:, 1] > 0) & (g[:, 1] < 29)
    np.testing.assert_allclose(s[interior], 1.0)  # the 4 nearest are at distance 1
    rng = np.random.default_rng(0)
    random_points = np.concatenate([rng.random((900, 2)) * 30, np.zeros((900, 1))], 1)
    assert uniformity(lattice)["knn_cv"] < 0.1 < uniformity(random_points)["knn_cv"]


def test_hole_fraction_by_hand():
    H, W = 4, 6
    K = K_of(3.0, H, W)
    v, u = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
    pts = np.stack([(u - W / 2) / 3.0, (v - H / 2) / 3.0, np.ones_like(u)], -1).reshape(-1, 3)  # one per pixel at z = 1
    assert hole_fraction(pts, K, (H, W), 0.0) == 0.0
    assert hole_fraction(pts[1:], K, (H, W), 0.0) == pytest.approx(1 / (H * W))
    # moved right by one pixel's width at z = 1: the last column is left empty
    assert hole_fraction(pts, K, (H, W), 1 / 3.0) == pytest.approx(1 / W)
    mask = np.zeros((H, W), bool)
    mask[:, :-1] = True
    assert hole_fraction(pts, K, (H, W), 1 / 3.0, target_mask=mask) == 0.0
    with pytest.raises(ValueError, match="NaN"):
        hole_fraction(np.full((3, 3), np.nan), K, (H, W), 0.0)


def test_ours_is_more_uniform_than_the_grid_and_the_triangle_sampler():
    """The issue's claim on a small standard scene (the full table: benchmarks/uniformity.py)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from uniformity import evaluate

    rows = {r["sampler"]: r for r in evaluate(standard_scenes((60, 80))[0], baseline=0.5, k=8, seed=0)}
    ours, grid, tri = rows["surface area (ours)"], rows["pixel grid"], rows["triangle (released)"]
    assert ours["knn_cv"] < 0.5 * grid["knn_cv"]
    assert ours["knn_cv"] <= tri["knn_cv"]


# -- model.sample_points -------------------------------------------------------------------------


def test_model_sample_points():
    model = infinidepth.from_preset("tiny")
    image = torch.rand(2, 3, 32, 48)
    K = K_of(40.0, 32, 48).float()
    pose = torch.eye(4)
    pose[:3, 3] = torch.tensor([1.0, 2.0, 3.0])
    sp = model.sample_points(image, 700, K, camera_to_world=pose, seed=5)
    assert sp.coords.shape == (2, 700, 2) and sp.points.shape == (2, 700, 3) and sp.colors.shape == (2, 700, 3)
    assert sp.coords.abs().max() <= 1 and (sp.colors >= 0).all() and (sp.colors <= 1).all()
    feats = model.encode(image)
    torch.testing.assert_close(sp.depth, model.decode_depth(feats, sp.coords))
    torch.testing.assert_close(sp.points[..., 2], sp.depth)
    torch.testing.assert_close(sp.points_world, sp.points + torch.tensor([1.0, 2.0, 3.0]))
    again = model.sample_points(image, 700, K, camera_to_world=pose, seed=5)
    assert torch.equal(again.coords, sp.coords)
    tri = model.sample_points(image, 700, K, strategy="triangle")
    assert tri.points.shape == (2, 700, 3)
    with pytest.raises(ValueError, match="focal lengths must be positive"):
        model.sample_points(image, 10, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="strategy"):
        model.sample_points(image, 10, K, strategy="poisson")
    with pytest.raises(ValueError, match=r"within \[1e-3, 1e9\] pixels"):  # fx * fy would underflow
        model.sample_points(image, 10, K_of(1e-30, 32, 48).float())
    with pytest.raises(ValueError, match="camera_to_world must be finite"):
        model.sample_points(image, 10, K, camera_to_world=torch.eye(3))
    # NumPy integers count as integers
    assert torch.equal(model.sample_points(image, np.int64(700), K, seed=np.uint32(5)).coords,
                       model.sample_points(image, 700, K, seed=5).coords)


def test_model_depth_gradient_is_the_chain_rule():
    """decode_depth(with_grad=True) = to_depth'(raw) * d raw: exp for the paper model,
    -1 / raw^2 (0 where the disparity floor clamps) for the released one."""
    image = torch.rand(1, 3, 32, 32)
    coords = torch.rand(1, 64, 2) * 2.2 - 1.1
    paper = infinidepth.from_preset("tiny")
    feats = paper.encode(image)
    depth, grad = paper.decode_depth(feats, coords, with_grad=True)
    raw, raw_grad = paper.decode(feats, coords, with_grad=True)
    torch.testing.assert_close(grad, torch.exp(raw)[..., None] * raw_grad)
    official = infinidepth.from_preset("official-tiny")
    with torch.no_grad():  # shift the output so that some disparities are above the 5e-3 floor, some below
        bias = official.depth_implicit_head.out_layer.linears()[-1][1]
        bias += 5e-3 - official.decode(official.encode(image), coords).median()
    feats = official.encode(image)
    depth, grad = official.decode_depth(feats, coords, with_grad=True)
    raw, raw_grad = official.decode(feats, coords, with_grad=True)
    assert (raw > 5e-3).any() and (raw < 5e-3).any() and (raw_grad != 0).any()
    want = torch.where(raw > 5e-3, -1 / raw.clamp_min(5e-3) ** 2, torch.zeros_like(raw))[..., None] * raw_grad
    torch.testing.assert_close(grad, want)
    # along an axis where the query is outside the released clamp window (|c| > 1 - 1e-6) the field is flat
    outside = coords.abs() > 1
    assert outside.any() and (grad[outside] == 0).all() and (grad[~outside] != 0).any()


# -- audit: intrinsics scaling, 16-bit inputs ----------------------------------------------------


def test_scale_intrinsics_takes_integer_and_untyped_intrinsics():
    """An integer K (torch.tensor([[500, 0, 320], ...])) was scaled by an integer matrix: 0.5 -> 0,
    so the focal lengths came back 0; lists and arrays raised AttributeError."""
    from infinidepth.sampling import scale_intrinsics

    want = torch.tensor([[250.0, 0, 160], [0, 250, 120], [0, 0, 1]], dtype=torch.float64)
    rows = [[500, 0, 320], [0, 500, 240], [0, 0, 1]]
    for K in (torch.tensor(rows), rows, np.array(rows), np.array(rows, np.float64)):
        torch.testing.assert_close(scale_intrinsics(K, (480, 640), (240, 320)), want)
    torch.testing.assert_close(scale_intrinsics(torch.tensor(rows), (480, 640), (np.int64(240), torch.tensor(320))), want)
    for bad in [(0, 640), (480.0, 640), (-480, 640), (480, 640, 3), None]:
        with pytest.raises(ValueError, match=r"from_size must be \(height, width\)"):
            scale_intrinsics(want, bad, (240, 320))
    with pytest.raises(ValueError, match=r"\[3, 3\]"):
        scale_intrinsics(torch.eye(4), (480, 640), (240, 320))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_normals_of_16_bit_depth_are_computed_in_float32(dtype):
    """Pixel centres and rays of a 640-pixel-wide grid in float16 are too coarse: the normals of a
    30-degree plane were off by 0.44 (and the surface-area weights by 100%)."""
    scene = tilted_plane(30, size=(40, 640))
    depth, grad = dense_field(scene)
    want = surface_normals(depth, grad, scene.intrinsics)
    got = surface_normals(depth.to(dtype), grad.to(dtype), scene.intrinsics)
    assert got.dtype == torch.float32
    assert (got.double() - want).abs().max() < 0.01  # what the 16-bit inputs themselves allow


def test_point_colours_at_the_image_border_are_the_border_pixels(tmp_path, capsys):
    """Samples in the outer half-pixel read the image's edge pixels, not a blend with zero padding."""
    from PIL import Image
    from plyfile import PlyData

    from infinidepth.cli import main

    model = infinidepth.from_preset("tiny")
    image = torch.full((1, 3, 32, 48), 0.8)
    sp = model.sample_points(image, 3000, K_of(40.0, 32, 48).float(), seed=1)
    edge = (sp.coords[0].abs() > torch.tensor([1 - 1 / 32, 1 - 1 / 48])).any(-1)
    assert edge.any()                                        # the test reaches the outer half-pixel
    torch.testing.assert_close(sp.colors, torch.full_like(sp.colors, 0.8))
    Image.fromarray(np.full((32, 48, 3), 200, np.uint8)).save(tmp_path / "grey.png")
    assert main(["predict", str(tmp_path / "grey.png"), "--checkpoint", "tiny", "--ply", "--points", "3000",
                 "--out", str(tmp_path / "o"), "--quiet"]) == 0, capsys.readouterr().err
    v = PlyData.read(str(tmp_path / "o" / "grey.ply"))["vertex"]
    assert (v["red"] == 200).all() and (v["green"] == 200).all() and (v["blue"] == 200).all()


def test_check_size_is_the_one_size_rule():
    """Images, render targets and output grids share one check: whole positive numbers, else a
    ValueError that names the argument (a float is refused rather than truncated)."""
    from infinidepth.sampling import check_size

    for good in [(3, 4), [3, 4], (np.int64(3), 4), (torch.tensor(3), 4), torch.Size([3, 4]), torch.tensor([3, 4])]:
        assert check_size(good, "x") == (3, 4)
        assert all(type(v) is int for v in check_size(good, "x"))
    for bad in [(0, 4), (3, -1), (3.0, 4), (2.7, 4), (True, 4), ("3", 4), (3,), (3, 4, 5), 3, None, torch.tensor([3.0, 4.0])]:
        with pytest.raises(ValueError, match=r"render size must be \(height, width\), two positive whole numbers, got"):
            check_size(bad, "render size")


# -- audit: camera helpers, eps, hole_fraction ---------------------------------------------------


def test_backproject_checks_its_camera():
    """backproject / rays took K as given: a [2, 3, 3] K for a batch of 1 (or depth for 2 images)
    was broadcast into 2 images of points, a skewed K silently lost its skew, a zero focal length
    gave infinite points, and a plain [3, 3] K raised IndexError."""
    from infinidepth.sampling import rays

    H, W = 6, 8
    K = torch.tensor([[10.0, 0, 4.0], [0, 12.0, 3.0], [0, 0, 1]])
    coords = grid_coords(H, W)
    depth = torch.rand(1, H * W) + 1
    v, u = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")  # pinhole at pixel centres
    want = torch.stack([(u.reshape(-1) - 4) / 10 * depth[0], (v.reshape(-1) - 3) / 12 * depth[0], depth[0]], -1)
    torch.testing.assert_close(backproject(depth, coords, K[None], (H, W))[0], want)
    torch.testing.assert_close(backproject(depth, coords, K, (H, W))[0], want)  # [3, 3] serves the batch
    skew = K.clone()
    skew[0, 1] = 2.0
    for bad, match in [(torch.stack([K, K]), "given for 2 images"), (torch.zeros(3, 3), "focal lengths must be positive"),
                       (torch.full((3, 3), float("nan")), "NaN"), (skew, "no skew"), (torch.eye(4), r"\[3, 3\]")]:
        with pytest.raises(ValueError, match=match):
            backproject(depth, coords, bad, (H, W))
        with pytest.raises(ValueError, match=match):
            rays(coords, bad, (H, W))
    with pytest.raises(ValueError, match="must be \\[B, N\\]"):
        backproject(torch.ones(2, H * W), coords, K, (H, W))
    with pytest.raises(ValueError, match="coords must have shape"):
        rays(coords[0], K, (H, W))


def test_surface_area_eps_must_be_finite_and_representable():
    """eps = inf zeroed every weight (the sampler then said the depth 'has no positive value'); an eps
    below float32's smallest normal number clamped to 0, and a pixel seen edge-on weighed infinity."""
    depth = torch.ones(1, 1, 4, 5)
    normals = torch.zeros(1, 3, 4, 5)
    normals[:, 2] = -1
    normals[0, :, 1, 1] = torch.tensor([1.0, 0.0, 0.0])  # near edge-on (the ray is slightly off the axis)
    normals[0, :, 2, 2] = 0.0                            # degenerate: |n . v| = 0 exactly
    K = K_of(4.0, 4, 5)
    for eps in [float("inf"), 1e-50]:
        with pytest.raises(ValueError, match="eps must be finite and at least"):
            surface_area_weights(depth, normals, K, eps)
    # the sampler computes its weights in float64, whose smallest normal number is about 2.2e-308
    for eps in [float("inf"), 1e-320]:
        with pytest.raises(ValueError, match="eps must be finite and at least"):
            surface_area_sample(depth, normals, K, 10, seed=0, eps=eps)
    assert torch.isfinite(surface_area_sample(depth, normals, K, 10, seed=0, eps=1e-50)).all()
    w = surface_area_weights(depth, normals, K, 1e-30)
    assert torch.isfinite(w).all() and w[0, 2, 2] > 1e28 * w[0, 0, 0]  # the clamp: 1 / eps times a frontal pixel
    assert torch.isfinite(surface_area_weights(depth.double(), normals.double(), K, 1e-50)).all()  # float64 holds it


def test_a_sky_beyond_the_far_cut_takes_no_sample():
    """A plane at depth 1.5 under a sky at the released models' disparity floor (depth 200, 30 of 96
    rows): by area the sky would take 200**2 / 1.5**2 times a plane pixel's share, 99.98% of the
    samples. With max_depth 90 (sample_points' default, the released sampler's cut) it takes none, and
    the plane's rows get them evenly; a picture of sky alone is an error naming the cut."""
    H, W = 96, 128
    depth = torch.full((1, 1, H, W), 1.5)
    depth[:, :, :30] = 200.0
    normals = torch.zeros(1, 3, H, W)
    normals[:, 2] = -1
    K = K_of(128.0, H, W)
    row = lambda c: ((c[0, :, 0] + 1) / 2 * H).floor().long()  # noqa: E731
    assert (row(surface_area_sample(depth, normals, K, 10_000, seed=0)) < 30).float().mean() > 0.99
    rows = row(surface_area_sample(depth, normals, K, 10_000, seed=0, max_depth=90))
    assert rows.min() >= 30
    per_row = torch.bincount(rows - 30, minlength=H - 30).double()   # a fronto-parallel plane: about even
    assert per_row.min() > 0.8 * per_row.mean()
    with pytest.raises(ValueError, match="no positive value below max_depth 90 .*not sampled"):
        surface_area_sample(torch.full((1, 1, H, W), 200.0), normals, K, 100, seed=0, max_depth=90)
    with pytest.raises(ValueError, match="max_depth must be positive"):
        surface_area_sample(depth, normals, K, 100, seed=0, max_depth=0)


def test_sample_points_cuts_at_the_released_far_plane_by_default():
    """model.sample_points (both strategies) places no point in a pixel whose depth is 90 or more
    (the released sampler's cut) unless told max_depth=None."""
    from infinidepth.models import from_preset

    torch.manual_seed(0)
    model = from_preset("official-tiny").eval()
    last = model.depth_implicit_head.out_layer.layers[-2]
    with torch.no_grad():   # disparity at the floor (depth 200) on about half the image, up to 0.7 elsewhere
        last.weight.mul_(10)
        last.bias.add_(0.5)
    image = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    K = K_of(80.0, 64, 96)
    dense = model.predict(image)[0, 0]
    assert 0.3 < float((dense >= 90).float().mean()) < 0.7

    def depth_of_pixels(sp):
        i = ((sp.coords[0, :, 0] + 1) / 2 * 64).floor().long().clamp(0, 63)
        j = ((sp.coords[0, :, 1] + 1) / 2 * 96).floor().long().clamp(0, 95)
        return dense[i, j]

    for strategy in ("surface_area", "triangle"):
        default = model.sample_points(image, 2000, K, strategy=strategy, seed=0)
        assert (depth_of_pixels(default) < 90).all(), strategy
        every = model.sample_points(image, 2000, K, strategy=strategy, seed=0, max_depth=None)
        assert (depth_of_pixels(every) >= 90).float().mean() > 0.5, strategy


def test_hole_fraction_checks_size_and_baseline():
    """A size of (0, 4) was reported as 'target_mask selects no pixel', (2.5, 4) as a NumPy
    TypeError, and a NaN baseline projected every point to NaN: 100% holes, no error."""
    K = K_of(2.0, 2, 4)
    pts = np.array([[-0.75, -0.25, 1.0]])  # pixel (0, 0)'s centre at z = 1
    assert hole_fraction(pts, K, (2, 4), 0.0) == pytest.approx(7 / 8)
    for bad in [(0, 4), (2.5, 4), (2, 4, 3)]:
        with pytest.raises(ValueError, match=r"size must be \(height, width\)"):
            hole_fraction(pts, K, bad, 0.0)
    with pytest.raises(ValueError, match="baseline must be finite"):
        hole_fraction(pts, K, (2, 4), float("nan"))


def test_sampler_ignores_the_depth_unit_at_any_scale():
    """Where the samples go depends on the areas' proportions only, so on no unit of depth. In float32
    the squared depth overflowed at 2**64 (the sampler said its weights were infinite) and vanished at
    2**-64 ("no positive value"); between, subnormal squares moved samples silently. Powers of two
    scale the float32 depth exactly, so the samples must be identical."""
    scene = standard_scenes((24, 32))[1]
    depth, grad = dense_field(scene)
    n = surface_normals(depth, grad, scene.intrinsics).float()
    depth = depth.float()  # what a model predicts
    want = surface_area_sample(depth, n, scene.intrinsics, 500, seed=3)
    for scale in [2.0**-80, 2.0**-70, 2.0**70, 2.0**80]:
        got = surface_area_sample(depth * scale, n, scene.intrinsics, 500, seed=3)
        assert torch.equal(got, want), scale
