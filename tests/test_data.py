"""Sub-pixel supervision, augmentation with consistent intrinsics, the dataset readers on files
written here in each set's own format, and bad data kept away from the loss."""

import json
import logging
import math
from pathlib import Path

import h5py
import numpy as np
import OpenEXR
import pytest
import torch
from PIL import Image

from infinidepth.data import (
    IRS,
    Augment,
    DataError,
    Hypersim,
    ProceduralScenes,
    TartanAir,
    UnrealStereo4K,
    UrbanSyn,
    VirtualKITTI2,
    clean_depth,
    collate,
    prepare,
    sample_depth_pairs,
)
from infinidepth.io import InputError
from infinidepth.sampling import check_intrinsics


# -- sub-pixel pairs ----------------------------------------------------------------------------------
def test_pairs_on_a_ramp_are_bilinear_inside_and_nearest_at_the_border():
    H, W = 12, 17
    depth = 1.0 + 0.5 * torch.arange(W).float()[None] + 0.25 * torch.arange(H).float()[:, None]  # a plane in (row, column)
    valid = torch.ones(H, W, dtype=torch.bool)
    coords, values = sample_depth_pairs(depth, valid, 5000, torch.Generator().manual_seed(0))
    u = (coords[:, 1].double() + 1) / 2 * W                       # continuous column, pixel j spans [j, j + 1)
    v = (coords[:, 0].double() + 1) / 2 * H
    interior = (u > 0.5) & (u < W - 0.5) & (v > 0.5) & (v < H - 0.5)
    expected = 1.0 + 0.5 * (u - 0.5) + 0.25 * (v - 0.5)          # the ramp through the pixel centres
    assert interior.sum() > 3000 and (~interior).sum() > 100
    torch.testing.assert_close(values[interior].double(), expected[interior], rtol=0, atol=1e-5)
    nearest = 1.0 + 0.5 * u.floor() + 0.25 * v.floor()
    torch.testing.assert_close(values[~interior].double(), nearest[~interior], rtol=0, atol=1e-6)


def test_pairs_never_blend_with_missing_depth():
    # Valid depth is 2.0 everywhere; holes hold garbage. Blending with a hole (or its 0) would show.
    g = torch.Generator().manual_seed(1)
    raw = torch.full((20, 30), 2.0)
    holes = torch.rand(20, 30, generator=g) < 0.3
    raw[holes] = float("nan")
    raw[0, :5] = -3.0
    raw[5, 5] = float("inf")
    depth, valid = clean_depth(raw)
    coords, values = sample_depth_pairs(depth, valid, 20000, g)
    assert (values - 2.0).abs().max() < 1e-6                     # a blend with a hole would be far off
    i = ((coords[:, 0] + 1) / 2 * 20).floor().long()
    j = ((coords[:, 1] + 1) / 2 * 30).floor().long()
    assert valid[i, j].all()                                       # every query lies in a valid pixel
    counts = torch.bincount(i * 30 + j, minlength=600)[valid.reshape(-1)].float()
    assert counts.std() / counts.mean() < 0.25                     # spread evenly over valid pixels


def test_clean_depth_masks_every_kind_of_bad_value():
    depth, valid = clean_depth(np.array([[1.0, np.nan, np.inf], [-1.0, 0.0, 900.0]], np.float32), max_depth=500)
    assert valid.tolist() == [[True, False, False], [False, False, False]]
    assert depth.tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="no valid depth"):
        sample_depth_pairs(depth * 0, valid & False, 10)


# -- augmentation ---------------------------------------------------------------------------------------
def plane_frame(H=60, W=90):
    """An image coding its own pixel coordinates and the exact depth of a tilted plane n.P = 5."""
    K = np.array([[70.0, 0, 41.0], [0, 75.0, 33.0], [0, 0, 1]])
    j, i = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    x, y = (j - K[0, 2]) / K[0, 0], (i - K[1, 2]) / K[1, 1]
    depth = 5.0 / (0.3 * x + 0.2 * y + 1.0)
    rgb = np.stack([j / W, i / H, np.full_like(j, 0.5)], -1).astype(np.float32)
    return rgb, torch.from_numpy(depth).float(), K


@pytest.mark.parametrize("seed", range(6))
def test_crop_flip_keep_intrinsics_image_and_ground_truth_consistent(seed):
    rgb, depth, K = plane_frame()
    valid = torch.ones_like(depth, dtype=torch.bool)
    s = prepare(rgb, depth, valid, K, (32, 48), 4000, Augment(scale=(0.4, 0.9), flip=True, color=0.0),
                torch.Generator().manual_seed(seed))
    # Ground truth: every supervised point, back-projected with the sample's intrinsics, lies on the
    # plane (up to the flip, which mirrors x).
    Kd = s["depth_intrinsics"].double()
    Hc, Wc = s["depth"].shape[1:]
    u = (s["coords"][:, 1].double() + 1) / 2 * Wc
    v = (s["coords"][:, 0].double() + 1) / 2 * Hc
    z = s["coord_depth"].double()
    X, Y = (u - Kd[0, 2]) / Kd[0, 0] * z, (v - Kd[1, 2]) / Kd[1, 1] * z
    plane = lambda X: 0.3 * X + 0.2 * Y + z                                            # noqa: E731
    flipped = (plane(-X) - 5).abs().max() < (plane(X) - 5).abs().max()
    residual = (plane(-X if flipped else X) - 5).abs()
    interior = (u > 0.5) & (u < Wc - 0.5) & (v > 0.5) & (v < Hc - 0.5)
    assert residual[interior].max() < 2e-3                     # bilinear of 1/z-linear depth: tiny error
    assert residual[~interior].max() < 0.05                    # nearest at the border: half a pixel's slope
    # The network image: its pixel centres, mapped through both intrinsics to the ground truth grid,
    # see the original pixel coordinates the image codes.
    Kn = s["intrinsics"].double()
    jn = torch.arange(48).double() + 0.5
    xn = (jn - Kn[0, 2]) / Kn[0, 0]                            # viewing direction of network column jn
    col_in_crop = xn * Kd[0, 0] + Kd[0, 2]
    x_cam = -xn if flipped else xn
    col_orig = x_cam * K[0, 0] + K[0, 2]                       # column of the original image
    got = s["image"][0, 16].double() * 90
    assert (got - col_orig).abs().max() < 1.0                  # antialiased resize: within a pixel
    assert col_in_crop.min() >= 0 and col_in_crop.max() <= Wc


def test_flips_come_about_half_the_time_and_never_when_off():
    rgb, depth, K = plane_frame()
    valid = torch.ones_like(depth, dtype=torch.bool)

    def mirrored(seed, flip):
        s = prepare(rgb, depth, valid, K, (60, 90), 4, Augment(scale=(1, 1), flip=flip, color=0),
                    torch.Generator().manual_seed(seed))
        red = s["image"][0, 30]                                  # codes the original column
        return bool(red[0] > red[-1])                            # falling from left to right: mirrored

    flips = [mirrored(seed, True) for seed in range(32)]
    assert 8 <= sum(flips) <= 24
    assert not any(mirrored(seed, False) for seed in range(8))


def test_crops_keep_the_input_aspect_span_the_scale_range_and_move_about():
    """On a 60x90 frame the largest crop of a square input is 60x60: crops are squares of side in
    [0.5, 1] x 60 (to rounding), of several sizes at several places, holding the frame's own depth
    there, at the offset the principal point moved by."""
    rgb, depth, K = plane_frame()
    valid = torch.ones_like(depth, dtype=torch.bool)
    sides, corners = set(), set()
    for seed in range(12):
        s = prepare(rgb, depth, valid, K, (16, 16), 4, Augment(scale=(0.5, 1.0), flip=False, color=0),
                    torch.Generator().manual_seed(seed))
        side, width = s["depth"].shape[1:]
        assert side == width and 30 <= side <= 60
        x0, y0 = K[0, 2] - s["depth_intrinsics"][0, 2].item(), K[1, 2] - s["depth_intrinsics"][1, 2].item()
        assert x0 == int(x0) and y0 == int(y0) and 0 <= x0 <= 90 - side and 0 <= y0 <= 60 - side
        x0, y0 = int(x0), int(y0)
        assert torch.equal(s["depth"][0], depth[y0:y0 + side, x0:x0 + side])
        sides.add(side)
        corners.add((y0, x0))
    assert len(sides) >= 4 and len(corners) >= 6


def test_without_augmentation_the_whole_frame_is_resized_and_intrinsics_scaled():
    rgb, depth, K = plane_frame()
    s = prepare(rgb, depth, torch.ones_like(depth, dtype=torch.bool), K, (30, 30), 10, None, torch.Generator())
    assert s["depth"].shape == (1, 60, 90)
    np.testing.assert_allclose(s["intrinsics"].numpy(), [[70 / 3, 0, 41 / 3], [0, 37.5, 16.5], [0, 0, 1]], rtol=1e-6)


def test_colour_jitter_changes_the_image_only():
    rgb, depth, K = plane_frame()
    valid = torch.ones_like(depth, dtype=torch.bool)
    a = prepare(rgb, depth, valid, K, (32, 48), 100, Augment(color=0.0), torch.Generator().manual_seed(3))
    b = prepare(rgb, depth, valid, K, (32, 48), 100, Augment(color=0.4), torch.Generator().manual_seed(3))
    assert torch.equal(a["coord_depth"], b["coord_depth"]) and torch.equal(a["depth"], b["depth"])
    assert not torch.allclose(a["image"], b["image"]) and b["image"].min() >= 0 and b["image"].max() <= 1


# -- readers, each on files in its set's format -----------------------------------------------------------
def write_rgb(path, H, W, ext="png"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path)


def write_exr(path, channels):
    path.parent.mkdir(parents=True, exist_ok=True)
    with OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}, channels) as f:
        f.write(str(path))


def read_all(ds):
    """Full frames (no augmentation, network size = frame size): the reader's own depth and K."""
    return [ds[i] for i in range(len(ds))]


def test_hypersim_distance_becomes_z_depth(tmp_path):
    H, W = 6, 8
    f = W / 2 / math.tan(math.radians(30))
    dist = np.full((H, W), 4.0, np.float16)
    dist[2, 3] = np.nan
    for cam, rgb_kind in (("scene_cam_00", "jpg"), ("scene_cam_01", "hdr")):
        images = tmp_path / "ai_001_002" / "images"
        (images / f"{cam}_geometry_hdf5").mkdir(parents=True)
        with h5py.File(images / f"{cam}_geometry_hdf5" / "frame.0000.depth_meters.hdf5", "w") as h:
            h.create_dataset("dataset", data=dist, compression="gzip")
        if rgb_kind == "jpg":
            write_rgb(images / f"{cam}_final_preview" / "frame.0000.tonemap.jpg", H, W)
        else:
            (images / f"{cam}_final_hdf5").mkdir()
            with h5py.File(images / f"{cam}_final_hdf5" / "frame.0000.color.hdf5", "w") as h:
                h.create_dataset("dataset", data=np.random.default_rng(0).random((H, W, 3)).astype(np.float16) * 5)
    samples = read_all(Hypersim(tmp_path, size=(H, W), n_pairs=64))
    assert len(samples) == 2
    x, y = np.arange(W) + 0.5 - W / 2, np.arange(H) + 0.5 - H / 2
    expected = 4.0 * f / np.sqrt(x[None] ** 2 + y[:, None] ** 2 + f * f)
    for s in samples:
        d = s["depth"][0].numpy()
        assert d[2, 3] == 0 and not s["valid"][0, 2, 3]
        mask = np.ones((H, W), bool)
        mask[2, 3] = False
        np.testing.assert_allclose(d[mask], expected[mask], rtol=1e-6)
        np.testing.assert_allclose(s["depth_intrinsics"].numpy(), [[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]], rtol=1e-6)
        assert 0 < s["image"].mean() < 1


def test_hypersim_tilt_shift_scenes_use_their_camera_from_the_metadata_csv(tmp_path):
    # Rows of ml-hypersim's contrib/mikeroberts3000/metadata_camera_parameters.csv: ai_026_006 has an image
    # plane tilted by 41 degrees, ai_021_002 is shifted both ways. ai_001_001 is left out of the file here.
    cameras = {"ai_026_006": [0.79032254, 0, 0, 0, 0.44393774, 0, 0, -0.39276233, -1.36887874],
               "ai_021_002": [0.59211003, 0, -0.0355266, 0, 0.44294548, 0.3543565, 0, 0.03175839, -1.02556463]}
    names = [f"M_cam_from_uv_{i}{j}" for i in range(3) for j in range(3)]
    (tmp_path / "metadata_camera_parameters.csv").write_text(
        "scene_name,settings_output_img_height,settings_output_img_width," + ",".join(names) + "\n"
        + "".join(f"{k},6.0,8.0," + ",".join(map(str, m)) + "\n" for k, m in cameras.items()))
    H, W = 6, 8
    rng = np.random.default_rng(3)
    dist = {}
    for scene in (*cameras, "ai_001_001"):
        images = tmp_path / scene / "images"
        (images / "scene_cam_00_geometry_hdf5").mkdir(parents=True)
        dist[scene] = rng.uniform(1.0, 9.0, (H, W)).astype(np.float16)       # Hypersim stores float16
        with h5py.File(images / "scene_cam_00_geometry_hdf5" / "frame.0000.depth_meters.hdf5", "w") as h:
            h.create_dataset("dataset", data=dist[scene])
        write_rgb(images / "scene_cam_00_final_preview" / "frame.0000.tonemap.jpg", H, W)
    ds = Hypersim(tmp_path, size=(H, W), n_pairs=8)
    samples = {Path(s["name"]).parts[-4]: s for s in read_all(ds)}
    assert sorted(samples) == ["ai_001_001", "ai_021_002", "ai_026_006"]

    # Hypersim's own rays (its notebook 01_casting_rays_that_match_hypersim_images): pixel centres at
    # u = linspace(-1 + 1/W, 1 - 1/W, W), v the same over H, top row first (v up), ray = M (u, v, 1) in
    # x right, y up, z backwards; the file holds the distance along it.
    u, v = np.meshgrid(np.linspace(-1 + 1 / W, 1 - 1 / W, W), np.linspace(-1 + 1 / H, 1 - 1 / H, H)[::-1])
    t = math.tan(math.radians(30))
    for scene, s in samples.items():
        M = np.array(cameras.get(scene, [t, 0, 0, 0, t * H / W, 0, 0, 0, -1])).reshape(3, 3)
        rays = np.stack([u, v, np.ones_like(u)], -1) @ M.T
        truth = dist[scene].astype(np.float64)[..., None] * rays / np.linalg.norm(rays, axis=-1, keepdims=True)
        truth = truth.reshape(-1, 3) * [1, -1, -1]                         # to x right, y down, z forward
        # The reader's z-depth and K back-project to the same points, seen from a frame turned about the
        # camera centre (its image plane's): a proper rotation maps one set onto the other.
        K = s["depth_intrinsics"].double().numpy()
        check_intrinsics(K, 1)   # these scenes have no skew: an exact 0 there, not rounding's, as the samplers need
        j, i = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
        z = s["depth"][0].double().numpy()[..., None]
        points = (np.stack([j, i, np.ones_like(j)], -1) @ np.linalg.inv(K).T * z).reshape(-1, 3)
        U, _, Vt = np.linalg.svd(truth.T @ points)
        R = (U @ Vt).T                                                      # best orthogonal map truth -> points
        assert np.linalg.det(R) > 0
        np.testing.assert_allclose(truth @ R.T, points, rtol=0, atol=2e-4 * np.abs(truth).max())
        if scene == "ai_001_001":                                           # not in the file: the standard camera
            f = W / 2 / t
            np.testing.assert_allclose(K, [[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]], rtol=1e-6)


def test_hypersim_hdr_is_exposed_for_the_pixels_that_hit_geometry(tmp_path):
    # ml-hypersim's scene_generate_images_tonemap.py takes the 90th-percentile brightness over the pixels
    # with render_entity_id != -1 only, and scales it to 0.8 after gamma 1/2.2. Here the geometry is grey
    # 0.5 and the rest (40%: a bright environment seen through a window) is 100, so the geometry must come
    # out at 0.8 * 255 = 204, whatever the window holds.
    H, W = 5, 10
    images = tmp_path / "ai_001_001" / "images"
    (images / "scene_cam_00_geometry_hdf5").mkdir(parents=True)
    (images / "scene_cam_00_final_hdf5").mkdir()
    ids = np.full((H, W), 7, np.int32)
    ids[:2] = -1
    hdr = np.full((H, W, 3), 0.5, np.float16)
    hdr[:2] = 100.0
    with h5py.File(images / "scene_cam_00_geometry_hdf5" / "frame.0000.depth_meters.hdf5", "w") as h:
        h.create_dataset("dataset", data=np.full((H, W), 3.0, np.float16))
    with h5py.File(images / "scene_cam_00_geometry_hdf5" / "frame.0000.render_entity_id.hdf5", "w") as h:
        h.create_dataset("dataset", data=ids)
    with h5py.File(images / "scene_cam_00_final_hdf5" / "frame.0000.color.hdf5", "w") as h:
        h.create_dataset("dataset", data=hdr)
    rgb = Hypersim(tmp_path, size=(H, W), n_pairs=8).frame(0)["rgb"]
    assert (rgb[2:] == 204).all() and (rgb[:2] == 255).all()


def test_hypersim_camera_file_given_but_broken_is_refused(tmp_path):
    (tmp_path / "ai_001_001" / "images").mkdir(parents=True)
    bad = tmp_path / "cameras.csv"
    bad.write_text("scene_name,M_cam_from_uv_00\nai_001_001,0.5\n")
    with pytest.raises(InputError, match="cameras.csv: expected the columns scene_name and M_cam_from_uv_00"):
        Hypersim(tmp_path, camera_parameters=bad)


def test_hypersim_camera_file_listing_no_scene_of_the_root_is_said(tmp_path, caplog):
    """A camera file that lists none of the root's scenes (a header alone, another release's rows)
    leaves them all on the standard camera: the warning names them, as for a file that lists some."""
    images = tmp_path / "ai_026_006" / "images"
    (images / "scene_cam_00_geometry_hdf5").mkdir(parents=True)
    with h5py.File(images / "scene_cam_00_geometry_hdf5" / "frame.0000.depth_meters.hdf5", "w") as h:
        h.create_dataset("dataset", data=np.full((6, 8), 2.0, np.float16))
    write_rgb(images / "scene_cam_00_final_preview" / "frame.0000.tonemap.jpg", 6, 8)
    names = [f"M_cam_from_uv_{i}{j}" for i in range(3) for j in range(3)]
    (tmp_path / "metadata_camera_parameters.csv").write_text("scene_name," + ",".join(names) + "\n")
    with caplog.at_level(logging.WARNING, logger="infinidepth.data"):
        Hypersim(tmp_path, size=(6, 8), n_pairs=8)
    assert "1 scenes are not in" in caplog.text and "ai_026_006" in caplog.text


def test_virtual_kitti2_centimetres_sky_and_per_frame_intrinsics(tmp_path):
    H, W = 5, 7
    for var in ("clone", "fog"):
        rgb = tmp_path / "vkitti_2.0.3_rgb" / "Scene01" / var / "frames" / "rgb" / "Camera_1" / "rgb_00003.jpg"
        write_rgb(rgb, H, W)
        depth = tmp_path / "vkitti_2.0.3_depth" / "Scene01" / var / "frames" / "depth" / "Camera_1" / "depth_00003.png"
        depth.parent.mkdir(parents=True)
        cm = np.full((H, W), 1234, np.uint16)
        cm[0, 0] = 65535
        Image.fromarray(cm).save(depth)
        txt = tmp_path / "vkitti_2.0.3_textgt" / "Scene01" / var / "intrinsic.txt"
        txt.parent.mkdir(parents=True)
        txt.write_text("frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]\n3 0 700.0 700.0 3.5 2.5\n3 1 725.0087 725.5 3.25 2.75\n")
    samples = read_all(VirtualKITTI2(tmp_path, size=(H, W), n_pairs=8))
    assert len(samples) == 2
    for s in samples:
        d = s["depth"][0]
        assert d[0, 0] == 0 and not s["valid"][0, 0, 0]
        assert torch.allclose(d[1:], torch.tensor(12.34))
        np.testing.assert_allclose(s["depth_intrinsics"].numpy(), [[725.0087, 0, 3.25], [0, 725.5, 2.75], [0, 0, 1]], rtol=1e-6)


def test_tartanair_metres_and_sky_placeholder(tmp_path):
    img = tmp_path / "abandonedfactory" / "Easy" / "P001" / "image_left" / "000010_left.png"
    write_rgb(img, 48, 64)
    depth = np.full((48, 64), 7.5, np.float32)
    depth[:10] = 10000.0
    (img.parent.parent / "depth_left").mkdir()
    np.save(img.parent.parent / "depth_left" / "000010_left_depth.npy", depth)
    (s,) = read_all(TartanAir(tmp_path, size=(48, 64), n_pairs=8))
    assert (s["depth"][0, :10] == 0).all() and torch.allclose(s["depth"][0, 10:], torch.tensor(7.5))
    np.testing.assert_allclose(s["depth_intrinsics"].numpy(), [[32, 0, 32], [0, 32, 24], [0, 0, 1]])


def test_irs_disparity_with_the_rig_baseline(tmp_path):
    img = tmp_path / "Home" / "ArchVizInterior03Data" / "l_00001.png"
    write_rgb(img, 54, 96)
    disp = np.full((54, 96), 4.8, np.float32)
    disp[3, 4] = 0.0
    write_exr(img.with_name("d_00001.exr"), {"RGB": np.repeat(disp[..., None], 3, -1)})
    (s,) = read_all(IRS(tmp_path, size=(54, 96), n_pairs=8))
    f = 48.0  # 480 px at 960 wide, scaled to 96
    d = s["depth"][0]
    assert d[3, 4] == 0
    np.testing.assert_allclose(d[0, 0].item(), 0.1 * f / 4.8, rtol=1e-6)


def test_tartanair_and_urbansyn_scale_fx_by_the_width_and_fy_by_the_height(tmp_path):
    """Frames of another shape than the camera's: fx follows the width, fy the height."""
    img = tmp_path / "tartan" / "env" / "Easy" / "P001" / "image_left" / "000000_left.png"
    write_rgb(img, 24, 64)                                     # 640x480 resized to 64x24
    (img.parent.parent / "depth_left").mkdir()
    np.save(img.parent.parent / "depth_left" / "000000_left_depth.npy", np.full((24, 64), 2.0, np.float32))
    K = TartanAir(tmp_path / "tartan", size=(24, 64)).frame(0)["intrinsics"]
    np.testing.assert_allclose(K, [[320 * 64 / 640, 0, 32], [0, 320 * 24 / 480, 12], [0, 0, 1]])
    urban = tmp_path / "urban"
    write_rgb(urban / "rgb" / "rgb_0001.png", 8, 16)
    write_exr(urban / "depth" / "depth_0001.exr", {"Y": np.full((8, 16), 1e-4, np.float32)})
    (urban / "camera_metadata.json").write_text(json.dumps(
        {"parameters": [{"Camera": {"focalLength_mm": 20.0, "sensorWidth_mm": 32.0, "sensorHeight_mm": 24.0}}]}))
    K = UrbanSyn(urban, size=(8, 16)).frame(0)["intrinsics"]
    np.testing.assert_allclose(K, [[20 / 32 * 16, 0, 8], [0, 20 / 24 * 8, 4], [0, 0, 1]])


def test_urbansyn_depth_scale_and_camera_json(tmp_path):
    write_rgb(tmp_path / "rgb" / "rgb_0042.png", 8, 16)
    depth = np.full((8, 16), 12.5e-5, np.float32)
    depth[0] = 5000e-5                                         # sky, beyond the range
    write_exr(tmp_path / "depth" / "depth_0042.exr", {"Y": depth})
    (tmp_path / "camera_metadata.json").write_text(json.dumps(
        {"parameters": [{"Camera": {"focalLength_mm": 20.0, "sensorWidth_mm": 32.0, "sensorHeight_mm": 16.0}}]}))
    (s,) = read_all(UrbanSyn(tmp_path, size=(8, 16), n_pairs=8))
    assert (s["depth"][0, 0] == 0).all()
    np.testing.assert_allclose(s["depth"][0, 1:].numpy(), 12.5, rtol=1e-5)
    np.testing.assert_allclose(s["depth_intrinsics"].numpy(), [[10, 0, 8], [0, 10, 4], [0, 0, 1]], rtol=1e-6)


def test_unrealstereo4k_baseline_from_the_two_cameras(tmp_path):
    scene = tmp_path / "00003"
    write_rgb(scene / "Image0" / "00007.png", 9, 16)
    disp = np.full((9, 16), 20.0, np.float32)
    disp[1, 1] = np.nan
    (scene / "Disp0").mkdir()
    np.save(scene / "Disp0" / "00007.npy", disp)
    for cam, tx in (("Extrinsics0", 0.0), ("Extrinsics1", -0.2)):
        (scene / cam).mkdir()
        (scene / cam / "00007.txt").write_text(f"8 0 8 0 8 4.5 0 0 1\n1 0 0 {tx + 3} 0 1 0 1 0 0 1 2\n")
    (s,) = read_all(UnrealStereo4K(tmp_path, size=(9, 16), n_pairs=8))
    d = s["depth"][0]
    assert d[1, 1] == 0
    np.testing.assert_allclose(d[0, 0].item(), 8 * 0.2 / 20.0, rtol=1e-5)


def test_unrealstereo4k_camera_of_another_image_size_is_refused(tmp_path):
    """The released camera files are for 3840x2160: an image resized alone (principal point then outside
    it) gives depth off by the resize factor, so it is refused with what to do."""
    scene = tmp_path / "00000"
    write_rgb(scene / "Image0" / "00001.png", 9, 16)
    (scene / "Disp0").mkdir()
    np.save(scene / "Disp0" / "00001.npy", np.full((9, 16), 20.0, np.float32))
    for cam, tx in (("Extrinsics0", 0.0), ("Extrinsics1", 0.5)):
        (scene / cam).mkdir()
        (scene / cam / "00001.txt").write_text(f"1920 0 1920 0 1920 1080 0 0 1\n1 0 0 {tx} 0 1 0 0 0 0 1 0\n")
    with pytest.raises(DataError, match=r"principal point \(1920, 1080\) lies outside the 16x9 image.*resized"):
        UnrealStereo4K(tmp_path, size=(9, 16)).frame(0)


# -- bad data ---------------------------------------------------------------------------------------------------
def tartan_frame(root, name, depth):
    img = root / "env" / "Easy" / "P000" / "image_left" / f"{name}_left.png"
    write_rgb(img, 16, 16)
    (img.parent.parent / "depth_left").mkdir(exist_ok=True)
    np.save(img.parent.parent / "depth_left" / f"{name}_left_depth.npy", depth)
    return img


def test_bad_frames_are_skipped_counted_and_named(tmp_path, caplog):
    tartan_frame(tmp_path, "000000", np.full((16, 16), np.nan, np.float32))     # nothing valid
    broken = tartan_frame(tmp_path, "000001", np.ones((16, 16), np.float32))
    broken.write_bytes(b"not a png")                                            # unreadable
    tartan_frame(tmp_path, "000002", np.full((16, 16), 3.0, np.float32))
    ds = TartanAir(tmp_path, size=(16, 16), n_pairs=8)
    with caplog.at_level(logging.WARNING, logger="infinidepth.data"):
        s = ds[0]
    assert s["name"].endswith("000002_left.png") and ds.skipped == 2
    assert "no valid depth" in caplog.text and str(broken) in caplog.text
    assert torch.allclose(s["coord_depth"], torch.tensor(3.0))


def test_a_dataset_with_no_usable_frame_fails_clearly(tmp_path):
    tartan_frame(tmp_path, "000000", np.zeros((16, 16), np.float32))
    with pytest.raises(DataError, match="every frame"):
        TartanAir(tmp_path, size=(16, 16), n_pairs=8)[0]
    with pytest.raises(InputError, match="no frames found"):
        Hypersim(tmp_path, size=(16, 16))
    with pytest.raises(InputError, match="not a directory"):
        IRS(tmp_path / "missing")


def test_depth_and_image_of_different_sizes_are_reported(tmp_path, caplog):
    tartan_frame(tmp_path, "000000", np.ones((8, 16), np.float32))
    with pytest.raises(DataError):
        TartanAir(tmp_path, size=(16, 16), n_pairs=8)[0]
    assert "(16, 16) but its depth map is (8, 16)" in caplog.text


# -- the procedural set through a DataLoader -----------------------------------------------------------------
def test_procedural_scenes_batch_through_a_dataloader():
    ds = ProceduralScenes(3, render_size=(48, 64), size=(32, 48), n_pairs=100, augment=Augment(scale=(1, 1)))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate)))
    assert batch["image"].shape == (3, 3, 32, 48) and batch["coords"].shape == (3, 100, 2)
    assert batch["intrinsics"].shape == (3, 3, 3) and len(batch["name"]) == 3
    assert (batch["coord_depth"] > 0).all()
    again = ds[1]
    assert torch.equal(again["coords"], batch["coords"][1])                      # reproducible per index
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["coords"], again["coords"])                     # new draws each epoch


def test_the_dataset_seed_changes_the_draws_and_the_same_seed_repeats_them():
    def first(seed):
        return ProceduralScenes(1, render_size=(24, 32), size=(16, 16), n_pairs=50, augment=Augment(), seed=seed)[0]

    a, b, c = first(0), first(0), first(1)
    assert torch.equal(a["coords"], b["coords"]) and not torch.equal(a["coords"], c["coords"])


# -- broken files: one clear skipped frame, never a traceback from inside a library -----------------------------
def vkitti_frame(root, intrinsic_text):
    frames = root / "Scene01" / "clone" / "frames"
    write_rgb(frames / "rgb" / "Camera_0" / "rgb_00000.jpg", 5, 7)
    (frames / "depth" / "Camera_0").mkdir(parents=True)
    Image.fromarray(np.full((5, 7), 1234, np.uint16)).save(frames / "depth" / "Camera_0" / "depth_00000.png")
    (root / "Scene01" / "clone" / "intrinsic.txt").write_text(intrinsic_text)
    return root / "Scene01" / "clone" / "intrinsic.txt"


def test_virtual_kitti2_intrinsics_with_only_a_header_or_short_rows(tmp_path):
    path = vkitti_frame(tmp_path / "a", "frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]\n")
    with pytest.raises(DataError, match=f"{path} has no intrinsics for frame 0, camera 0"):
        VirtualKITTI2(tmp_path / "a", size=(5, 7)).frame(0)
    path = vkitti_frame(tmp_path / "b", "frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]\n0 0 700\n")
    with pytest.raises(DataError, match=f"{path}:2: expected"):
        VirtualKITTI2(tmp_path / "b", size=(5, 7)).frame(0)


def test_virtual_kitti2_copies_of_intrinsic_txt_must_agree(tmp_path):
    """Archives unpacked side by side under one root can each hold Scene01/clone/intrinsic.txt: equal
    copies are one camera; different ones are refused naming both, not one picked by file-system order."""
    header = "frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]\n"
    first = vkitti_frame(tmp_path / "root" / "vkitti_2.0.3_rgb", header + "0 0 700.0 700.0 3.5 2.5\n")
    second = tmp_path / "root" / "vkitti_2.0.3_textgt" / "Scene01" / "clone" / "intrinsic.txt"
    second.parent.mkdir(parents=True)
    second.write_text(first.read_text())
    K = VirtualKITTI2(tmp_path / "root", size=(5, 7)).frame(0)["intrinsics"]
    np.testing.assert_allclose(np.asarray(K), [[700, 0, 3.5], [0, 700, 2.5], [0, 0, 1]])
    second.write_text(header + "0 0 725.0 725.0 3.5 2.5\n")
    with pytest.raises(DataError, match=f"two different intrinsic.txt for Scene01/clone: {first} and {second}"):
        VirtualKITTI2(tmp_path / "root", size=(5, 7))


def test_urbansyn_sky_from_the_semantic_map(tmp_path):
    """Where ss/ss_NNNN.png is there, its class-10 pixels (sky) are invalid whatever depth they carry;
    without it, the 1000 m rule alone; a semantic map of another size is refused."""
    write_rgb(tmp_path / "rgb" / "rgb_0007.png", 8, 16)
    write_exr(tmp_path / "depth" / "depth_0007.exr", {"Y": np.full((8, 16), 300e-5, np.float32)})
    (tmp_path / "camera_metadata.json").write_text(json.dumps(
        {"parameters": [{"Camera": {"focalLength_mm": 20.0, "sensorWidth_mm": 32.0, "sensorHeight_mm": 16.0}}]}))
    assert bool(UrbanSyn(tmp_path, size=(8, 16)).frame(0)["valid"].all())
    ids = np.full((8, 16, 3), 0, np.uint8)
    ids[:3] = 10
    (tmp_path / "ss").mkdir()
    Image.fromarray(ids).save(tmp_path / "ss" / "ss_0007.png")
    f = UrbanSyn(tmp_path, size=(8, 16)).frame(0)
    valid = np.asarray(f["valid"]).reshape(8, 16)
    assert not valid[:3].any() and valid[3:].all()
    np.testing.assert_allclose(np.asarray(f["depth"]).reshape(8, 16)[3:], 300.0, rtol=1e-5)
    colours = np.full((8, 16, 3), (128, 64, 128), np.uint8)   # colour-coded: road, and sky in its top rows
    colours[:2] = (70, 130, 180)
    colours[2, :] = (10, 10, 10)                               # an id-like grey is not sky in a colour map
    Image.fromarray(colours).save(tmp_path / "ss" / "ss_0007.png")
    valid = np.asarray(UrbanSyn(tmp_path, size=(8, 16)).frame(0)["valid"]).reshape(8, 16)
    assert not valid[:2].any() and valid[2:].all()
    Image.fromarray(ids[:4]).save(tmp_path / "ss" / "ss_0007.png")
    with pytest.raises(DataError, match="ss_0007.png is 16x4, its depth map 16x8"):
        UrbanSyn(tmp_path, size=(8, 16)).frame(0)


def test_urbansyn_zero_sensor_size_is_a_clear_error(tmp_path):
    write_rgb(tmp_path / "rgb" / "rgb_0001.png", 8, 16)
    write_exr(tmp_path / "depth" / "depth_0001.exr", {"Y": np.full((8, 16), 1e-4, np.float32)})
    (tmp_path / "camera_metadata.json").write_text(json.dumps(
        {"parameters": [{"Camera": {"focalLength_mm": 20.0, "sensorWidth_mm": 0, "sensorHeight_mm": 16.0}}]}))
    with pytest.raises(DataError, match="camera_metadata.json: focalLength_mm, sensorWidth_mm and sensorHeight_mm"):
        UrbanSyn(tmp_path, size=(8, 16)).frame(0)


def test_any_exception_reading_a_frame_becomes_a_data_error_naming_it(tmp_path, caplog):
    img = tartan_frame(tmp_path, "000000", np.ones((16, 16), np.float32))
    tartan_frame(tmp_path, "000001", np.ones((16, 16), np.float32))

    class Fragile(TartanAir):
        def load(self, record):
            if record[0] == img:
                raise IndexError("index 3 is out of bounds for axis 0 with size 1")   # a library's own error
            return super().load(record)

    ds = Fragile(tmp_path, size=(16, 16), n_pairs=8)
    with pytest.raises(DataError, match=f"{img}: IndexError: index 3"):
        ds.frame(0)
    with caplog.at_level(logging.WARNING, logger="infinidepth.data"):
        assert ds[0]["name"].endswith("000001_left.png") and ds.skipped == 1


def test_a_file_without_its_partner_is_logged_and_listed(tmp_path, caplog):
    tartan_frame(tmp_path, "000000", np.ones((16, 16), np.float32))
    lone = tmp_path / "env" / "Easy" / "P000" / "image_left" / "000001_left.png"
    write_rgb(lone, 16, 16)
    with caplog.at_level(logging.WARNING, logger="infinidepth.data"):
        ds = TartanAir(tmp_path, size=(16, 16), n_pairs=8)
    assert len(ds) == 1 and len(ds.unpaired) == 1 and str(lone) in ds.unpaired[0] and str(lone) in caplog.text


def lone_depth_of_each_reader(root):
    """One complete frame and one depth (or disparity) file without its image, for each reader
    whose frames pair an image with a depth file: (reader, the lone file)."""
    out = []
    tartan = root / "tartan"
    tartan_frame(tartan, "000000", np.ones((16, 16), np.float32))
    lone = tartan / "env" / "Easy" / "P000" / "depth_left" / "000001_left_depth.npy"
    np.save(lone, np.ones((16, 16), np.float32))
    out.append((TartanAir, tartan, lone))
    irs = root / "irs"
    write_rgb(irs / "Home" / "S" / "l_1.png", 16, 16)
    for n in (1, 2):
        write_exr(irs / "Home" / "S" / f"d_{n}.exr", {"Y": np.full((16, 16), 4.8, np.float32)})
    out.append((IRS, irs, irs / "Home" / "S" / "d_2.exr"))
    urban = root / "urban"
    write_rgb(urban / "rgb" / "rgb_0001.png", 16, 16)
    for n in (1, 2):
        write_exr(urban / "depth" / f"depth_{n:04d}.exr", {"Y": np.full((16, 16), 1e-4, np.float32)})
    out.append((UrbanSyn, urban, urban / "depth" / "depth_0002.exr"))
    unreal = root / "unreal"
    write_rgb(unreal / "00000" / "Image0" / "00001.png", 16, 16)
    (unreal / "00000" / "Disp0").mkdir()
    for n in (1, 2):
        np.save(unreal / "00000" / "Disp0" / f"{n:05d}.npy", np.full((16, 16), 20.0, np.float32))
    out.append((UnrealStereo4K, unreal, unreal / "00000" / "Disp0" / "00002.npy"))
    hyper = root / "hyper"
    geometry = hyper / "ai_001_001" / "images" / "scene_cam_00_geometry_hdf5"
    geometry.mkdir(parents=True)
    with h5py.File(geometry / "frame.0000.depth_meters.hdf5", "w") as h:
        h.create_dataset("dataset", data=np.full((16, 16), 4.0, np.float16))
    for n in (0, 1):
        write_rgb(geometry.parent / "scene_cam_00_final_preview" / f"frame.{n:04d}.tonemap.jpg", 16, 16)
    out.append((Hypersim, hyper, geometry.parent / "scene_cam_00_final_preview" / "frame.0001.tonemap.jpg"))
    return out


def test_every_reader_logs_a_depth_without_its_image_and_an_image_without_its_depth(tmp_path, caplog):
    # The module's promise: a file whose partner is missing (the image of a depth as well as the depth
    # of an image) is logged when the set is listed and kept in dataset.unpaired, not silently dropped.
    for reader, root, lone in lone_depth_of_each_reader(tmp_path):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="infinidepth.data"):
            ds = reader(root, size=(16, 16), n_pairs=8)
        assert len(ds) == 1, reader.__name__
        assert len(ds.unpaired) == 1 and str(lone) in ds.unpaired[0], (reader.__name__, ds.unpaired)
        assert str(lone) in caplog.text, reader.__name__


def test_procedural_files_train_without_normals_and_refuse_a_corrupt_index(tmp_path):
    from infinidepth.data import ProceduralFiles, render_set

    render_set(tmp_path, scenes=1, size=(12, 16), progress=False)
    normal = tmp_path / "scene_000000" / "view_00_normal.exr"
    normal.write_bytes(normal.read_bytes()[:50])              # truncated: training needs no normals
    ds = ProceduralFiles(tmp_path, size=(12, 16), n_pairs=8)
    assert ds[0]["depth"].shape == (1, 12, 16) and ds.skipped == 0
    (tmp_path / "index.json").write_bytes(b"\x00\xff garbage")
    with pytest.raises(InputError, match="index.json: corrupt index"):
        ProceduralFiles(tmp_path)


# -- settings and inputs refused where they are made, never deep inside ------------------------------------------
def test_iterating_a_dataset_stops_at_its_end(tmp_path):
    for n in range(3):
        tartan_frame(tmp_path, f"{n:06d}", np.ones((16, 16), np.float32))
    ds = TartanAir(tmp_path, size=(8, 8), n_pairs=4)
    with pytest.raises(IndexError, match="out of range"):
        ds[3]
    assert [s["name"][-15:] for s in ds] == ["000000_left.png", "000001_left.png", "000002_left.png"]
    assert ds[-1]["name"] == ds[2]["name"]


def test_bad_settings_are_refused_when_the_dataset_is_built(tmp_path):
    tartan_frame(tmp_path, "000000", np.ones((16, 16), np.float32))
    with pytest.raises(ValueError, match=r"TartanAir: size must be \(height, width\), two positive whole numbers"):
        TartanAir(tmp_path, size=(0, 8))
    with pytest.raises(ValueError, match="Augment.scale"):
        Augment(scale=(1.0, 0.5))
    with pytest.raises(ValueError, match="Augment.scale"):
        Augment(scale=(0.0, 0.5))
    with pytest.raises(ValueError, match="Augment.color"):
        Augment(color=1.5)
    with pytest.raises(TypeError, match="augment must be an Augment"):
        TartanAir(tmp_path, size=(8, 8), augment={"flip": True})
    with pytest.raises(ValueError, match="render_size"):
        ProceduralScenes(2, render_size=(0, 16), size=(8, 8))


def test_prepare_refuses_images_it_would_garble_and_takes_arrays():
    K = np.array([[10.0, 0, 8], [0, 10, 8], [0, 0, 1]])
    depth, valid = clean_depth(np.ones((16, 16), np.float32))
    g = torch.Generator().manual_seed(0)
    for rgb, message in ((np.full((16, 16, 3), 128.0, np.float32), r"values in \[0, 1\]"),   # 8-bit values as float
                         (np.full((16, 16, 3), 30000, np.uint16), "dtype"),
                         (np.zeros((16, 16, 4), np.uint8), r"\[H, W, 3\]"),
                         (np.zeros((16, 16), np.uint8), r"\[H, W, 3\]")):
        with pytest.raises(ValueError, match=message):
            prepare(rgb, depth, valid, K, (8, 8), 4, None, g)
    s = prepare(np.zeros((16, 16, 3), np.uint8), depth.numpy(), valid.numpy(), K, (8, 8), 4, Augment(), g)
    assert s["image"].shape == (3, 8, 8)


def test_prepare_never_supervises_with_depth_its_mask_lets_through():
    depth = torch.ones(8, 8)
    depth[2:6, 2:6] = float("nan")
    depth[0, :4] = -1.0
    s = prepare(np.zeros((8, 8, 3), np.uint8), depth, torch.ones(8, 8, dtype=torch.bool),
                np.array([[5.0, 0, 4], [0, 5, 4], [0, 0, 1]]), (8, 8), 1000, None, torch.Generator().manual_seed(0))
    torch.testing.assert_close(s["coord_depth"], torch.ones(1000))   # never NaN, never a blend with -1 or 0
    assert not s["valid"][0, 2:6, 2:6].any() and not s["valid"][0, 0, :4].any() and (s["depth"] >= 0).all()


def test_bad_intrinsics_are_refused_naming_the_frame(tmp_path, caplog):
    path = vkitti_frame(tmp_path, "frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]\n0 0 0 0 3.5 2.5\n")
    ds = VirtualKITTI2(tmp_path, size=(5, 7), n_pairs=4)
    with pytest.raises(DataError, match="rgb_00000.jpg: intrinsics need positive focal lengths"):
        ds.frame(0)
    path.write_text("frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]\n0 0 nan 700 3.5 2.5\n")
    with pytest.raises(DataError, match="NaN or infinite"):
        ds.frame(0)
    with pytest.raises(ValueError, match="3x3"):
        prepare(np.zeros((8, 8, 3), np.uint8), torch.ones(8, 8), torch.ones(8, 8, dtype=torch.bool), np.eye(2),
                (8, 8), 4, None, torch.Generator())


def test_a_crop_without_valid_depth_is_skipped_naming_the_frame(tmp_path, caplog):
    depth = np.zeros((16, 16), np.float32)
    depth[0, 0] = 1.0                                   # one valid pixel: small crops miss it
    img = tartan_frame(tmp_path, "000000", depth)
    ds = TartanAir(tmp_path, size=(8, 8), n_pairs=4, augment=Augment(scale=(0.2, 0.2), flip=False, color=0), seed=1)
    with caplog.at_level(logging.WARNING, logger="infinidepth.data"), pytest.raises(DataError, match="every frame"):
        ds[0]
    assert f"{img}: the crop holds no valid depth" in caplog.text


def test_a_flip_mirrors_the_skew_of_the_intrinsics():
    rgb, depth, K = plane_frame()
    K = K.copy()
    K[0, 1] = 2.0
    valid = torch.ones_like(depth, dtype=torch.bool)
    for seed in range(8):
        s = prepare(rgb, depth, valid, K, (60, 90), 4, Augment(scale=(1, 1), color=0), torch.Generator().manual_seed(seed))
        Kd = s["depth_intrinsics"]
        flipped = abs(Kd[0, 2].item() - (90 - 41.0)) < 1e-6
        assert Kd[0, 1].item() == (-2.0 if flipped else 2.0)


def test_a_folder_without_an_index_is_an_input_error(tmp_path):
    from infinidepth.data import ProceduralFiles

    with pytest.raises(InputError, match="no index.json"):
        ProceduralFiles(tmp_path)


def test_a_missing_reader_module_stops_at_the_first_frame(tmp_path, monkeypatch):
    for n in range(3):
        write_rgb(tmp_path / "rgb" / f"rgb_{n:04d}.png", 8, 16)
        write_exr(tmp_path / "depth" / f"depth_{n:04d}.exr", {"Y": np.full((8, 16), 1e-4, np.float32)})
    (tmp_path / "camera_metadata.json").write_text(json.dumps(
        {"parameters": [{"Camera": {"focalLength_mm": 20.0, "sensorWidth_mm": 32.0, "sensorHeight_mm": 16.0}}]}))
    ds = UrbanSyn(tmp_path, size=(8, 16), n_pairs=4)
    monkeypatch.setitem(__import__("sys").modules, "OpenEXR", None)     # as if it were not installed
    with pytest.raises(ImportError, match="rgb_0000.png: reading UrbanSyn needs a module that is not installed"):
        ds[0]
    assert ds.skipped == 0                                 # not three broken frames, one after another
