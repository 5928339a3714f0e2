"""Closed-form checks of the camera, normal, surface-area and splat code, written to catch faults a
mutation pass found the other tests let through: cameras with fx != fy and an off-centre principal
point, rotated camera-to-world transforms, pixels without depth, batches of very different depth
scales, the SH band-0 colour, the PLY degree rule and the splat defaults.

Every expected value is worked out here by hand or in plain numpy, not by the code under test.
"""

import math

import numpy as np
import pytest
import torch

from infinidepth.ops import grid_coords
from infinidepth.sampling import (check_intrinsics, scale_intrinsics, surface_area_sample, surface_area_weights,
                                  surface_normals, to_world)
from infinidepth.sampling.surface import MAX_SUBDIVIDED_CELLS, subdivision

SH_C0 = 1 / (2 * math.sqrt(math.pi))   # the constant band-0 spherical harmonic


# -- cameras ------------------------------------------------------------------------------------


def test_scale_intrinsics_scales_x_by_the_width_and_y_by_the_height():
    """From 480x640 to 120x320: x (fx, cx) halves with the width, y (fy, cy) quarters with the height."""
    K = torch.tensor([[500.0, 0, 330.0], [0, 400.0, 250.0], [0, 0, 1]], dtype=torch.float64)
    want = torch.tensor([[250.0, 0, 165.0], [0, 100.0, 62.5], [0, 0, 1]], dtype=torch.float64)
    torch.testing.assert_close(scale_intrinsics(K, (480, 640), (120, 320)), want, rtol=0, atol=1e-12)


def test_to_world_rotates_then_translates():
    """A 90-degree turn about z (x -> y, y -> -x) and a shift by (1, 2, 3), applied by hand."""
    T = torch.tensor([[0.0, -1, 0, 1], [1, 0, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1]], dtype=torch.float64)
    pts = torch.tensor([[[1.0, 0, 0], [0, 1, 5], [2, -3, 0.5]]], dtype=torch.float64)
    want = torch.tensor([[[1.0, 3, 3], [0, 2, 8], [4, 4, 3.5]]], dtype=torch.float64)
    torch.testing.assert_close(to_world(pts, T), want, rtol=0, atol=1e-12)
    torch.testing.assert_close(to_world(pts, T[None]), want, rtol=0, atol=1e-12)
    bad = T.clone()
    bad[0, 3] = float("nan")
    with pytest.raises(ValueError, match="camera_to_world must be finite"):
        to_world(pts, bad)
    bad[0, 3] = float("inf")
    with pytest.raises(ValueError, match="camera_to_world must be finite"):
        to_world(pts, bad)


@pytest.mark.parametrize("K,message", [
    ([[10.0, 0, 4], [0, 12, 3], [0, 0, 2]], "no skew"),                               # a scaled bottom row
    ([[10.0, 0, 4], [0, -12, 3], [0, 0, 1]], "focal lengths must be positive"),       # fy negative, fx fine
    ([[1e10, 0, 4], [0, 12, 3], [0, 0, 1]], r"within \[1e-3, 1e9\]"),                 # fx too large, fy fine
    ([[10.0, 0, 4], [0, 1e10, 3], [0, 0, 1]], r"within \[1e-3, 1e9\]"),               # fy too large, fx fine
    ([[10.0, 0, 4], [0, 1e-4, 3], [0, 0, 1]], r"within \[1e-3, 1e9\]"),               # fy too small
])
def test_check_intrinsics_refuses_each_bad_entry_alone(K, message):
    with pytest.raises(ValueError, match=message):
        check_intrinsics(K, 1)


# -- normals ------------------------------------------------------------------------------------


def plane_field(n, c, K, H, W):
    """z-depth d = c / (n . r) of the plane n . P = c and its derivative with respect to the
    normalised (y, x) at the pixel centres, in numpy: dd/du = -c n_x / (fx (n . r)^2), du/dx = W / 2."""
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    v, u = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
    nr = n[0] * (u - cx) / fx + n[1] * (v - cy) / fy + n[2]
    d = c / nr
    dd_du, dd_dv = -c * n[0] / fx / nr**2, -c * n[1] / fy / nr**2
    grad = np.stack([dd_dv * H / 2, dd_du * W / 2])          # channel 0: d/dy, channel 1: d/dx
    return torch.from_numpy(d)[None, None], torch.from_numpy(grad)[None]


def test_normals_of_a_tilted_plane_seen_by_an_anisotropic_off_centre_camera():
    """fx != fy and (cx, cy) away from the centre: the normal of a plane tilted in both x and y is
    its own (unit, facing the camera) at every pixel."""
    H, W = 7, 10
    K = np.array([[6.0, 0, 3.7], [0, 11.0, 4.6], [0, 0, 1]])
    n = np.array([0.45, -0.6, -1.0])
    n /= np.linalg.norm(n)
    c = float(n @ np.array([0.1, 0.2, 5.0]))                  # through (0.1, 0.2, 5); c < 0: n faces the camera
    depth, grad = plane_field(n, c, K, H, W)
    assert (depth > 0).all()
    got = surface_normals(depth, grad, torch.from_numpy(K))
    want = torch.from_numpy(n).view(1, 3, 1, 1).expand(1, 3, H, W)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-7)   # the grid's pixel centres are float32
    # the same plane from behind (its normal given the other way round) still faces the camera
    depth2, grad2 = plane_field(-n, -c, K, H, W)
    torch.testing.assert_close(surface_normals(depth2, grad2, torch.from_numpy(K)), want, rtol=0, atol=1e-7)


def test_pixels_without_depth_get_a_zero_normal_whatever_their_gradient():
    """Depth 0 (and below) marks no surface: a zero normal even where the gradient is not zero (with
    d = 0 the two tangents are parallel, so their cross product is only rounding, not a direction)."""
    H, W = 7, 9
    g = torch.Generator().manual_seed(0)
    K = torch.tensor([[5.3, 0, 4.1], [0, 6.7, 3.3], [0, 0, 1]], dtype=torch.float64)
    depth = torch.rand(1, 1, H, W, generator=g, dtype=torch.float64) + 1
    grad = torch.randn(1, 2, H, W, generator=g, dtype=torch.float64) * 3
    hole = torch.zeros(1, 1, H, W, dtype=torch.bool)
    hole[..., ::2, :] = True
    depth = torch.where(hole, torch.zeros_like(depth), depth)
    depth[0, 0, 0, 0] = -1.0
    n = surface_normals(depth, grad, K)
    assert (n[hole.expand_as(n)] == 0).all()
    assert (n[0, :, 0, 0] == 0).all()
    torch.testing.assert_close(n[(~hole).expand_as(n)].reshape(3, -1).norm(dim=0),
                               torch.ones(int((~hole).sum()), dtype=torch.float64), rtol=0, atol=1e-12)


# -- surface-area weights and the sampler ---------------------------------------------------------


def test_surface_area_weights_refuse_infinite_depth():
    depth = torch.ones(1, 1, 3, 4)
    depth[0, 0, 1, 2] = float("inf")
    normals = torch.zeros(1, 3, 3, 4)
    normals[:, 2] = -1
    K = torch.tensor([[4.0, 0, 2], [0, 4, 1.5], [0, 0, 1]])
    with pytest.raises(ValueError, match="depth contains infinite values"):
        surface_area_weights(depth, normals, K)
    with pytest.raises(ValueError, match="depth contains infinite values"):
        surface_area_sample(depth, normals, K, 8, seed=0)


def test_sampler_scales_each_image_of_a_batch_on_its_own():
    """Each image's areas are taken in proportion within that image: a second image 2**-600 times
    as deep (its squared depths, relative to the first image's, below float64's range) gets the
    samples it gets at the first image's scale. Powers of two scale the depth exactly."""
    H, W = 6, 8
    K = torch.tensor([[5.0, 0, 3.5], [0, 6.0, 3.0], [0, 0, 1]], dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    depth = torch.rand(1, 1, H, W, generator=g, dtype=torch.float64) + 1
    depth[..., 2:4, 3:6] = 0                                  # a hole: no surface, no samples
    normals = torch.zeros(1, 3, H, W, dtype=torch.float64)
    normals[:, 2] = -1
    want = surface_area_sample(torch.cat([depth, depth]), torch.cat([normals, normals]), K, 30, seed=4)
    got = surface_area_sample(torch.cat([depth, depth * 2.0**-600]), torch.cat([normals, normals]), K, 30, seed=4)
    assert torch.equal(got, want)
    rows = ((want[..., 0] + 1) / 2 * H).floor().long()
    cols = ((want[..., 1] + 1) / 2 * W).floor().long()
    assert (depth[0, 0][rows, cols] > 0).all()


def test_subdivision_is_the_smallest_power_of_two_for_one_sample_per_sub_pixel():
    """Docstring by hand on 12 pixels: up to 12 samples 1 x 1; 13 to 48 samples 2 x 2; 49 to 192 4 x 4;
    and never past MAX_SUBDIVIDED_CELLS cells."""
    for n, r in [(1, 1), (12, 1), (13, 2), (48, 2), (49, 4), (192, 4), (193, 8)]:
        assert subdivision(n, 12) == r, n
    pixels = MAX_SUBDIVIDED_CELLS // 4          # 2 x 2 fills the limit exactly, 4 x 4 would pass it
    assert subdivision(10**12, pixels) == 2


# -- Gaussians, PLY and splats ----------------------------------------------------------------------


def test_sh_band_zero_colour_by_hand():
    from infinidepth.gs.gaussians import rgb_to_sh0, sh0_to_rgb

    sh0 = torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64)
    torch.testing.assert_close(sh0_to_rgb(sh0), torch.tensor([0.5, 0.5 + SH_C0, 0.5 - 2 * SH_C0], dtype=torch.float64),
                               rtol=0, atol=1e-15)
    rgb = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    torch.testing.assert_close(rgb_to_sh0(rgb), (rgb - 0.5) / SH_C0, rtol=0, atol=1e-15)


def _ply_with(path, rest):
    from plyfile import PlyData, PlyElement

    names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", *[f"f_rest_{i}" for i in rest], "opacity",
             "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    v = np.zeros(2, dtype=[(k, "f4") for k in names])
    v["rot_0"] = 1.0
    PlyData([PlyElement.describe(v, "vertex")]).write(str(path))
    return path


def test_read_ply_takes_the_degree_that_holds_every_f_rest_coefficient(tmp_path):
    """f_rest_0..8 is degree 1 (3 channels x 3); one coefficient more (f_rest_9) needs degree 2, whose
    f_rest_10..23 are then missing; a lone f_rest_0 needs degree 1 and lacks f_rest_1..8. A file is
    refused rather than read with coefficients dropped."""
    from infinidepth.gs.gaussians import read_ply

    assert read_ply(_ply_with(tmp_path / "d0.ply", [])).degree == 0
    assert read_ply(_ply_with(tmp_path / "d1.ply", range(9))).degree == 1
    assert read_ply(_ply_with(tmp_path / "d2.ply", range(24))).degree == 2
    with pytest.raises(ValueError, match="missing f_rest_10, f_rest_11"):
        read_ply(_ply_with(tmp_path / "ten.ply", range(10)))
    with pytest.raises(ValueError, match="missing f_rest_1, f_rest_2"):
        read_ply(_ply_with(tmp_path / "one.ply", [0]))


def _lattice(k=6, spacing=0.2, z=4.0):
    ys, xs = torch.meshgrid(torch.arange(k) * spacing, torch.arange(k) * spacing, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1), torch.full((k * k,), z)], -1)


def test_splats_from_points_take_the_opacity_and_each_colour_channel_given():
    from infinidepth.gs.splats import splats_from_points

    pts = _lattice()
    colors = torch.stack([torch.linspace(0, 1, len(pts)), torch.full((len(pts),), 0.2), torch.full((len(pts),), 0.9)], -1)
    g = splats_from_points(pts, colors, opacity=0.4)
    torch.testing.assert_close(g.opacities, torch.full((len(pts),), 0.4))
    assert g.degree == 0
    torch.testing.assert_close(g.sh[:, :, 0].double(), (colors.double() - 0.5) / SH_C0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g.means, pts)


def test_point_spacing_needs_more_points_than_neighbours():
    from infinidepth.gs.splats import point_spacing

    with pytest.raises(ValueError, match=r"need more than 3 points to measure their spacing, got 3$"):
        point_spacing(_lattice()[:3])
    with pytest.raises(ValueError, match=r"need more than 5 points to measure their spacing, got 5$"):
        point_spacing(_lattice()[:5], neighbours=5)


@pytest.mark.parametrize("frames", [3, 8])
def test_camera_paths_by_hand(frames):
    """orbit: the eyes lie on the circle of radius ``radius`` through the source in the image plane
    (z = 0), one step of 2 pi / frames apart; swing: eye ``i`` at (radius sin(2 pi i / frames), 0, 0)."""
    from infinidepth.gs.splats import camera_path

    radius, depth = 0.3, 5.0
    eyes = np.array([np.linalg.inv(m)[:3, 3] for m in camera_path("orbit", frames, depth, radius)])
    np.testing.assert_allclose(eyes[:, 2], 0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(eyes - [-radius, 0, 0], axis=1), radius, atol=1e-12)
    chord = np.linalg.norm(np.diff(np.vstack([eyes, eyes[:1]]), axis=0), axis=1)
    np.testing.assert_allclose(chord, 2 * radius * math.sin(math.pi / frames), atol=1e-12)
    swing = np.array([np.linalg.inv(m)[:3, 3] for m in camera_path("swing", frames, depth, radius)])
    want = np.stack([radius * np.sin(2 * np.pi * np.arange(frames) / frames), np.zeros(frames), np.zeros(frames)], 1)
    np.testing.assert_allclose(swing, want, atol=1e-12)
