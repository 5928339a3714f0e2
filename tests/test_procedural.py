"""The procedural renderer: exact depth against closed forms, multi-view consistency, normals,
determinism, fine structure, and the on-disk layout of `infinidepth data render`."""

import json
import math

import numpy as np
import pytest
import torch

from infinidepth.cli import main
from infinidepth.data import ProceduralFiles, generate_scene, render
from infinidepth.data.procedural import BOX, CYLINDER, RECT, SPHERE, Primitive, Scene, load_view, look_at, render_set


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
