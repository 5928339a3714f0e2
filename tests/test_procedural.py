"""The procedural renderer: exact depth against closed forms, multi-view consistency, normals,
determinism, fine structure, and the on-disk layout of `infinidepth data render`."""

import json
import math

import numpy as np
import pytest
import torch

from infinidepth.cli import main
from infinidepth.data import ProceduralFiles, generate_scene, render
from infinidepth.data.procedural import BOX, CHECKER, CYLINDER, RECT, SPHERE, TILES, Primitive, Scene, load_view, look_at, render_set
from infinidepth.data import procedural


def one_object_scene(*prims, eye=(0, 0, 0), target=(0, 1, 0), light=(0, 0, 100.0)):
    return Scene(seed=0, kind="street", primitives=list(prims), light=light, cameras=[look_at(eye, target)],
                 fov_x_degrees=60.0, sky=True)


def pixel_rays(K, H, W):
    """Camera-frame rays with z = 1 through every pixel centre, [H, W, 3]."""
    j, i = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    return np.stack([(j - K[0, 2]) / K[0, 0], (i - K[1, 2]) / K[1, 1], np.ones_like(j)], -1)


def test_fronto_parallel_rectangle_has_constant_depth_and_facing_normal():
    # A wall 5 m ahead (world y = 5), 2 m wide and 1 m tall: z = 5 inside its projection, sky outside.
    wall = Primitive(RECT, (0, 5, 0), np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]), (1.0, 0.5), (0.5, 0.5, 0.5))
    r = render(one_object_scene(wall), (48, 64))
    K = r.intrinsics.numpy()
    rays = pixel_rays(K, 48, 64)
    inside = (np.abs(rays[..., 0] * 5) < 1.0) & (np.abs(rays[..., 1] * 5) < 0.5)
    assert inside.any() and (~inside).any()
    assert np.array_equal(r.valid.numpy(), inside)
    np.testing.assert_allclose(r.depth.numpy()[inside], 5.0, rtol=1e-5)
    assert (r.depth.numpy()[~inside] == 0).all()
    np.testing.assert_allclose(r.normals.numpy()[inside], np.broadcast_to([0, 0, -1.0], (inside.sum(), 3)), atol=1e-5)


def test_ground_plane_depth_matches_the_closed_form():
    # Camera 1.5 m above an infinite-looking ground, looking level: z = h * fy / (v - cy) below the horizon.
    ground = Primitive(RECT, (0, 0, 0), np.eye(3), (1000.0, 1000.0), (0.5, 0.5, 0.5))
    r = render(one_object_scene(ground, eye=(0, 0, 1.5), target=(0, 1, 1.5)), (60, 80))
    K = r.intrinsics.numpy()
    v = np.arange(60) + 0.5
    expected = np.where(v > K[1, 2], 1.5 * K[1, 1] / np.maximum(v - K[1, 2], 1e-9), 0.0)
    expected = np.where(expected < 999, expected, 0.0)   # rays that pass beyond the 1 km ground see sky
    got = r.depth.numpy()
    for row in range(60):
        if expected[row] > 0:
            np.testing.assert_allclose(got[row], expected[row], rtol=2e-5)
        else:
            assert (got[row] == 0).all()


def test_sphere_and_cylinder_depth_on_the_optical_axis():
    for prim, near in ((Primitive(SPHERE, (0, 6, 0), np.eye(3), (1.25,), (1, 0, 0)), 6 - 1.25),
                       (Primitive(CYLINDER, (0, 4, 0), np.eye(3), (0.5, 2.0), (1, 0, 0)), 4 - 0.5),
                       (Primitive(BOX, (0, 3, 0), np.eye(3), (0.4, 0.3, 0.2), (1, 0, 0)), 3 - 0.3)):
        r = render(one_object_scene(prim), (31, 41))  # odd sizes: the centre pixel is on the axis
        assert r.depth[15, 20].item() == pytest.approx(near, rel=1e-5)
        assert r.normals[15, 20].tolist() == pytest.approx([0, 0, -1], abs=1e-4)


def test_camera_inside_a_box_sees_its_walls():
    room = Primitive(BOX, (0, 0, 0), np.eye(3), (2.0, 3.0, 1.5), (0.5, 0.5, 0.5))
    r = render(one_object_scene(room), (21, 31))
    assert r.valid.all()
    assert r.depth[10, 15].item() == pytest.approx(3.0, rel=1e-5)   # the far wall, straight ahead


def test_views_of_one_scene_agree_in_3d():
    # Back-project view 0, move the points into view 1, compare with view 1's own depth: most pixels
    # (those not occluded in view 1) must agree.
    scene = generate_scene(3, views=2, baseline=0.3)
    H, W = 48, 64
    r0, r1 = render(scene, (H, W), view=0), render(scene, (H, W), view=1)
    K = r0.intrinsics.numpy()
    pts = pixel_rays(K, H, W) * r0.depth.numpy()[..., None]
    world = pts @ r0.camera_to_world.numpy()[:3, :3].T + r0.camera_to_world.numpy()[:3, 3]
    T1 = r1.camera_to_world.numpy()
    cam1 = (world - T1[:3, 3]) @ T1[:3, :3]
    u = K[0, 0] * cam1[..., 0] / cam1[..., 2] + K[0, 2]
    v = K[1, 1] * cam1[..., 1] / cam1[..., 2] + K[1, 2]
    j, i = np.floor(u).astype(int), np.floor(v).astype(int)
    ok = r0.valid.numpy() & (cam1[..., 2] > 0) & (i >= 0) & (i < H) & (j >= 0) & (j < W)
    # Nearest pixel: exact on fronto-parallel surfaces, within a few per cent on slanted ones; wrong
    # poses or intrinsics would put most points metres off.
    d1 = r1.depth.numpy()[i[ok], j[ok]]
    z = cam1[..., 2][ok]
    agree = np.abs(d1 - z) < 0.03 * z
    assert ok.sum() > 0.5 * H * W and agree.mean() > 0.8


def test_the_other_views_are_moved_within_the_baseline_and_turned_a_few_degrees():
    """generate_scene(views=...): each further camera is the first moved in its own image plane by up
    to the baseline (never along its axis) and turned by at most 5 degrees in yaw and in pitch."""
    scene = generate_scene(5, views=4, baseline=0.3)
    R0, c0 = scene.cameras[0][:3, :3], scene.cameras[0][:3, 3]
    for T in scene.cameras[1:]:
        shift = R0.T @ (T[:3, 3] - c0)                                    # in the first camera's axes
        assert 0 < np.linalg.norm(shift) and abs(shift[0]) <= 0.3 and abs(shift[1]) <= 0.3 and abs(shift[2]) < 1e-9
        turn = math.degrees(math.acos(min(1.0, (np.trace(R0.T @ T[:3, :3]) - 1) / 2)))
        assert 0 < turn <= 5 * math.sqrt(2) + 1e-6


def test_normals_are_unit_and_face_the_camera():
    r = render(generate_scene(1), (48, 64))
    n = r.normals[r.valid]
    assert torch.allclose(n.norm(dim=-1), torch.ones(len(n)), atol=1e-4)
    K = r.intrinsics.numpy()
    rays = torch.from_numpy(pixel_rays(K, 48, 64)).float()[r.valid]
    assert ((n * rays).sum(-1) <= 1e-4).all()
    assert (r.depth[~r.valid] == 0).all() and (r.normals[~r.valid] == 0).all()
    assert r.rgb.min() >= 0 and r.rgb.max() <= 1


def test_same_seed_same_arrays_different_seed_different_scene():
    a, b = render(generate_scene(7), (40, 56)), render(generate_scene(7), (40, 56))
    for x, y in ((a.rgb, b.rgb), (a.depth, b.depth), (a.normals, b.normals)):
        assert torch.equal(x, y)
    c = render(generate_scene(8), (40, 56))
    assert not torch.equal(a.depth, c.depth)


def test_both_kinds_and_both_backgrounds_occur():
    scenes = [generate_scene(s) for s in range(12)]
    assert {s.kind for s in scenes} == {"street", "room"}
    streets = [s for s in scenes if s.kind == "street"]
    assert {s.sky for s in streets} == {True, False}


def test_wires_and_grille_bars_are_one_to_two_pixels_wide_at_4k():
    widths = []
    for seed in range(6):
        scene = generate_scene(seed)
        T = scene.cameras[0]
        f4k = 3840 / 2 / math.tan(math.radians(scene.fov_x_degrees) / 2)
        for p in scene.primitives:
            dist = np.linalg.norm(np.asarray(p.centre) - T[:3, 3])
            if p.kind == CYLINDER and p.size[0] < 0.03:
                widths.append(2 * p.size[0] * f4k / dist)
            if p.kind == RECT and p.grille[0] > 0:
                widths.append(p.grille[2] * f4k / dist)
    widths = np.array(widths)
    assert len(widths) > 10
    # Sized at the middle of each structure; they span distances, so allow a factor around [1, 2].
    assert np.median(widths) > 0.8 and np.median(widths) < 4.0 and widths.min() > 0.2


def test_thin_structures_alias_at_low_resolution():
    # A 2 cm wire 10 m away: at 4K it is ~6 px wide... at 64 px wide it is a fraction of a pixel,
    # so some rows catch it and some do not (the high-frequency detail the ground truth must carry).
    wire = Primitive(CYLINDER, (0, 10, 0), np.eye(3), (0.004, 3.0), (0, 0, 0))
    wall = Primitive(RECT, (0, 20, 0), np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]), (50.0, 50.0), (1, 1, 1))
    low = render(one_object_scene(wire, wall), (48, 64))
    high = render(one_object_scene(wire, wall), (240, 3840))
    assert 0 < (high.depth < 15).sum(1).float().mean() < 3 * 1.3    # about 1.2 px wide in every row at 4K
    rows_hit = (low.depth < 15).any(1)
    assert not rows_hit.all()


def test_render_rejects_bad_arguments():
    scene = generate_scene(0)
    with pytest.raises(ValueError, match="size"):
        render(scene, (0, 10))
    with pytest.raises(ValueError, match="view 3"):
        render(scene, (8, 8), view=3)
    with pytest.raises(ValueError, match="kind"):
        generate_scene(0, kind="forest")


def test_render_set_layout_resume_and_refusal(tmp_path):
    out = tmp_path / "set"
    res = render_set(out, scenes=2, size=(24, 32), views=2, progress=False)
    assert res["rendered"] == 4
    index = json.loads((out / "index.json").read_text())
    assert index["size"] == [24, 32] and index["views"] == 2
    view = load_view(out / "scene_000001" / "view_01_camera.json")
    direct = render(generate_scene(1, views=2, baseline=0.3), (24, 32), view=1)
    np.testing.assert_array_equal(view["depth"], direct.depth.numpy())
    np.testing.assert_array_equal(view["rgb"], (direct.rgb.numpy() * 255).round().astype(np.uint8))
    np.testing.assert_allclose(view["normals"], direct.normals.numpy(), atol=1e-3)
    np.testing.assert_allclose(view["intrinsics"], direct.intrinsics.numpy())
    before = (out / "scene_000000" / "view_00_depth.exr").stat().st_mtime_ns
    res = render_set(out, scenes=3, size=(24, 32), views=2, progress=False)     # grows, keeps the rest
    assert res == {**res, "rendered": 2, "kept": 4}
    assert (out / "scene_000000" / "view_00_depth.exr").stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="different"):
        render_set(out, scenes=3, size=(48, 64), views=2, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mine.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        render_set(tmp_path / "other", scenes=1, size=(8, 8), progress=False)
    assert (tmp_path / "other" / "mine.txt").read_text() == "keep me"
    ds = ProceduralFiles(out, size=(24, 32), n_pairs=16)
    assert len(ds) == 6 and ds[0]["depth"].shape == (1, 24, 32)
    # a run that failed before its first view (out of memory, say) left only its index: a run with
    # other settings may take the folder over
    failed = tmp_path / "failed"
    failed.mkdir()
    (failed / "index.json").write_text(json.dumps({**index, "size": [100000, 100000]}))
    (failed / "README.md").write_text("layout")
    assert render_set(failed, scenes=1, size=(24, 32), progress=False)["rendered"] == 1
    assert json.loads((failed / "index.json").read_text())["size"] == [24, 32]


def test_a_set_begun_by_another_renderer_version_is_not_continued(tmp_path):
    """A set begun before a renderer change (its index has no version, or another one) would come
    out half drawn one way, half the other: it is refused by name, and still reads as it is."""
    out = tmp_path / "set"
    render_set(out, scenes=1, size=(16, 24), progress=False)
    index = json.loads((out / "index.json").read_text())
    assert index["renderer"] == procedural.RENDERER
    old = {k: v for k, v in index.items() if k != "renderer"}          # as sets were written before
    (out / "index.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match=f"rendered by renderer version 1, and this is version {procedural.RENDERER}"):
        render_set(out, scenes=2, size=(16, 24), progress=False)
    assert json.loads((out / "index.json").read_text()) == old and not (out / "scene_000001").exists()
    assert len(ProceduralFiles(out, size=(16, 24), n_pairs=4)) == 1


def test_data_render_command(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["data", "render", "--scenes", "1", "--size", "40x30", "--out", str(out), "--quiet"]) == 0
    assert load_view(out / "scene_000000" / "view_00_camera.json")["depth"].shape == (30, 40)  # WIDTHxHEIGHT
    assert main(["data", "render", "--scenes", "1", "--size", "40", "--out", str(out)]) == 2
    assert "--size" in capsys.readouterr().err
    assert main(["data", "render", "--scenes", "1", "--size", "80x60", "--out", str(out)]) == 2
    assert "different" in capsys.readouterr().err


def test_render_set_refuses_a_bad_size_before_writing_anything(tmp_path):
    with pytest.raises(ValueError, match="render size"):
        render_set(tmp_path / "set", scenes=1, size=(0, 16), progress=False)
    assert not (tmp_path / "set").exists()


def test_render_set_asked_for_fewer_scenes_keeps_the_index_whole(tmp_path):
    render_set(tmp_path / "set", scenes=2, size=(12, 16), progress=False)
    report = render_set(tmp_path / "set", scenes=1, size=(12, 16), progress=False)
    assert report["rendered"] == 0 and report["kept"] == 1
    assert json.loads((tmp_path / "set" / "index.json").read_text())["scenes"] == 2
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        render_set(tmp_path / "file", scenes=1, size=(12, 16), progress=False)


def test_checker_and_tiles_follow_the_coordinates_along_the_surface():
    # A slanted board and a box's front face: the solid texture there must be a function of the two
    # coordinates along the surface only: the checker parity floor(a/s) + floor(b/s), tile grout where
    # either is within 0.04 cells of a whole number. The expected pattern comes from a float64 ray-plane
    # intersection, away from cell borders. The box is 0.505 m deep: at scale 0.5 its front face sits
    # 1.01 cells from the centre, inside the grout band of the coordinate across the face.
    slant = np.array([[math.cos(0.3), -math.sin(0.3), 0], [math.sin(0.3), math.cos(0.3), 0], [0, 0, 1]]) @ \
        np.array([[1, 0, 0], [0, math.cos(0.8), -math.sin(0.8)], [0, math.sin(0.8), math.cos(0.8)]])
    scale = 0.5
    cases = [  # (kind, centre, rotation, size, a point of the visible face (local), its local normal, in-face axes)
        (RECT, (0.3, 5.0, 0.2), slant, (2.0, 2.0), (0, 0, 0), (0, 0, 1), (0, 1)),
        (BOX, (0.2, 5.0, 0.1), np.eye(3), (2.0, 0.505, 1.5), (0, -0.505, 0), (0, 1, 0), (0, 2)),
    ]
    for kind, centre, rotation, size, face_point, face_normal, axes in cases:
        for pattern in (CHECKER, TILES):
            prim = Primitive(kind, centre, rotation, size, (0.9, 0.1, 0.1), (0.1, 0.1, 0.9), pattern, scale)
            r = render(one_object_scene(prim), (60, 80), shadows=False)
            rays_world = pixel_rays(r.intrinsics.numpy(), 60, 80) @ r.camera_to_world.numpy()[:3, :3].T   # eye at 0
            normal, point = rotation @ face_normal, rotation @ face_point + np.array(centre)
            t = (point @ normal) / (rays_world @ normal)
            local = (t[..., None] * rays_world - np.array(centre)) @ rotation
            q = local[..., list(axes)] / scale                            # cells along the surface
            frac = q - np.floor(q)
            border = np.minimum(frac, 1 - frac).min(-1)
            half = np.array(size)[list(axes)]
            on_face = (np.abs(local[..., list(axes)]) <= half).all(-1) & (t > 0)
            got_b = r.rgb.numpy()[..., 2] > r.rgb.numpy()[..., 0]                  # colour b is the blue one
            if pattern == CHECKER:
                away = on_face & (border > 0.05)
                expected_b = (np.floor(q).sum(-1) % 2) == 1
            else:
                away = on_face & ((border > 0.06) | (border < 0.02))
                expected_b = border < 0.04
            assert away.sum() > 1000 and expected_b[away].any() and (~expected_b[away]).any()
            np.testing.assert_array_equal(r.valid.numpy()[away], True)
            np.testing.assert_array_equal(got_b[away], expected_b[away], err_msg=f"kind {kind} pattern {pattern}")


def test_thin_wire_and_small_ball_far_away_have_exact_coverage_and_depth():
    # A 3 mm wire and a 3 mm ball 20 m ahead, seen through a 2 degree field of view so that they are
    # ~7 px wide: coverage and depth against the float64 closed forms. (float32's b^2 - a c loses
    # 20^2 * 6e-8 m^2, more than r^2 = 9e-6 m^2: wires came out 50% too wide, 3 mm off in depth.)
    D, radius, H, W = 20.0, 0.003, 8, 800
    for prim in (Primitive(CYLINDER, (0, D, 0), np.eye(3), (radius, 3.0), (0.5, 0.5, 0.5)),
                 Primitive(SPHERE, (0, D, 0), np.eye(3), (radius,), (0.5, 0.5, 0.5))):
        scene = Scene(seed=0, kind="street", primitives=[prim], light=(0, 0, 100.0),
                      cameras=[look_at((0, 0, 0), (0, 1, 0))], fov_x_degrees=2.0, sky=True)
        r = render(scene, (H, W))
        rays = pixel_rays(r.intrinsics.numpy(), H, W)     # camera (x, y, 1) is world (x, 1, -y)
        lateral = rays[..., 0] ** 2 + (rays[..., 1] ** 2 if prim.kind == SPHERE else 0)
        a, b, c = lateral + 1, -D, D * D - radius * radius
        disc = b * b - a * c                               # float64: no cancellation at these sizes
        z = np.where(disc >= 0, (-b - np.sqrt(np.maximum(disc, 0))) / a, 0.0)
        miss_distance = D * np.sqrt(lateral / (lateral + 1))            # ray to centre (axis), metres
        clear = np.abs(miss_distance - radius) > 1e-3 * radius
        hit = z > 0
        assert 25 <= hit.sum() <= 70    # about 7 px per row for the wire, a 7 px disc for the ball
        np.testing.assert_array_equal(r.valid.numpy()[clear], hit[clear])
        np.testing.assert_allclose(r.depth.numpy()[hit & clear], z[hit & clear], rtol=0, atol=1e-5)


def test_a_point_seen_from_two_views_has_one_depth_and_one_colour():
    # Lambertian shading and solid textures: a point X seen at a pixel centre of view 0 must look the
    # same from view 1's eye. A 1x1 render from that eye with its optical axis through X sees X
    # itself (where nothing is in front): depth |X - eye|, and view 0's colour.
    for seed in (9, 12):                                    # a street and a room
        scene = generate_scene(seed, views=2)
        H, W = 37, 53
        a = render(scene, (H, W), view=0)
        T = a.camera_to_world.numpy()
        X = (pixel_rays(a.intrinsics.numpy(), H, W) * a.depth.numpy()[..., None].astype(np.float64)) @ T[:3, :3].T + T[:3, 3]
        eye = scene.cameras[1][:3, 3]
        pixels = [(i, j) for i in range(2, H, 5) for j in range(2, W, 5) if a.depth[i, j] > 0]
        at_x = Scene(seed=seed, kind=scene.kind, primitives=scene.primitives, light=scene.light,
                     cameras=[look_at(eye, X[i, j]) for i, j in pixels], fov_x_degrees=scene.fov_x_degrees, sky=scene.sky)
        checked = 0
        for k, (i, j) in enumerate(pixels):
            b = render(at_x, (1, 1), view=k)
            if abs(b.depth[0, 0].item() / np.linalg.norm(X[i, j] - eye) - 1) > 1e-5:
                continue                                     # hidden from view 1
            checked += 1
            np.testing.assert_allclose(b.rgb[0, 0].numpy(), a.rgb[i, j].numpy(), atol=1e-4, err_msg=f"{seed} {i} {j}")
        assert checked > 60


def test_views_agree_to_float32_precision_on_planes():
    # View 0's pixels moved into view 1 (world_to_camera = inverse of camera_to_world) land between
    # four pixel centres of view 1; where those four see one plane, 1/z is bilinear in the pixel
    # coordinates, so view 1's 1/z interpolated there must give the moved point's z exactly.
    for seed, (H, W) in ((1, (37, 53)), (3, (48, 64))):     # a street at an odd size, a room
        scene = generate_scene(seed, views=2)
        a, b = render(scene, (H, W), view=0), render(scene, (H, W), view=1)
        K = b.intrinsics.numpy()
        Ta, Tb = a.camera_to_world.numpy(), b.camera_to_world.numpy()
        world = (pixel_rays(a.intrinsics.numpy(), H, W) * a.depth.numpy()[..., None].astype(np.float64)) @ Ta[:3, :3].T + Ta[:3, 3]
        world_to_b = np.linalg.inv(Tb)
        cam = world @ world_to_b[:3, :3].T + world_to_b[:3, 3]
        u = K[0, 0] * cam[..., 0] / cam[..., 2] + K[0, 2] - 0.5    # in pixel-index units
        v = K[1, 1] * cam[..., 1] / cam[..., 2] + K[1, 2] - 0.5
        j, i = np.floor(u).astype(int), np.floor(v).astype(int)
        ok = (a.depth.numpy() > 0) & (cam[..., 2] > 0) & (i >= 0) & (i < H - 1) & (j >= 0) & (j < W - 1)
        i, j, fu, fv, z = i[ok], j[ok], (u - np.floor(u))[ok], (v - np.floor(v))[ok], cam[..., 2][ok]
        db, nb = b.depth.numpy().astype(np.float64), b.normals.numpy()
        corners = [(i, j), (i, j + 1), (i + 1, j), (i + 1, j + 1)]
        one_plane = np.all([db[c] > 0 for c in corners], 0)
        one_plane &= np.all([np.abs(nb[c] - nb[i, j]).max(-1) < 1e-5 for c in corners], 0)
        inv = [1 / np.where(db[c] > 0, db[c], 1) for c in corners]
        one_plane &= np.abs(inv[0] + inv[3] - inv[1] - inv[2]) * z < 1e-6   # no twist: one plane
        interp = (1 - fv) * ((1 - fu) * inv[0] + fu * inv[1]) + fv * ((1 - fu) * inv[2] + fu * inv[3])
        rel = np.abs(1 / interp - z) / z
        seen = one_plane & (rel < 1e-3)                     # the rest: hidden from view 1
        assert seen.sum() > 0.5 * H * W and seen.sum() > 0.95 * one_plane.sum()
        assert rel[seen].max() < 2e-6


def test_a_larger_size_of_the_same_scene_casts_the_same_rays():
    # Pixel (3i + 1, 3j + 1) at three times the size has the ray of pixel (i, j): same scene, same values.
    for seed in (1, 2):
        small, large = render(generate_scene(seed), (13, 17)), render(generate_scene(seed), (39, 51))
        for x, y in ((small.depth, large.depth), (small.rgb, large.rgb), (small.normals, large.normals)):
            np.testing.assert_allclose(x.numpy(), y.numpy()[1::3, 1::3], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("text", ['{"pages": ["a.html"]}', '["a.html"]', "{not json"])
def test_render_set_never_takes_over_a_folder_whose_index_json_is_not_a_procedural_one(tmp_path, text):
    # Another tool's index.json (or a corrupt one) is not "a run that failed before its first view":
    # the folder is refused, named, as any other non-empty folder, and nothing in it is overwritten.
    out = tmp_path / "site"
    out.mkdir()
    (out / "index.json").write_text(text)
    (out / "a.html").write_text("keep me")
    with pytest.raises(ValueError, match="index.json"):
        render_set(out, scenes=1, size=(8, 8), progress=False)
    assert (out / "index.json").read_text() == text and sorted(p.name for p in out.iterdir()) == ["a.html", "index.json"]
    assert main(["data", "render", "--scenes", "1", "--size", "8x8", "--out", str(out), "--quiet"]) == 2
    assert (out / "index.json").read_text() == text
