"""The Python API on awkward inputs a notebook user passes: each either works or fails with one
clear error naming the problem (no traceback from deep inside, no silent garbage)."""

import json

import numpy as np
import pytest
import torch

import infinidepth
from infinidepth.io import colorize_depth, depth_to_png16, write_ply
from infinidepth.ops import grid_coords
from infinidepth.sampling import check_camera_to_world, check_intrinsics


@pytest.fixture(scope="module")
def tiny():
    return infinidepth.from_preset("tiny")


def test_encode_and_kernel_decode_under_a_callers_autocast(tiny):
    """A caller's torch.autocast made encode return bf16 maps and the fold bf16 weights, which the cpp
    kernel refused ("weight 2 must be float32 [256, 32], got [256, 32]"): predict failed on the CPU."""
    image = torch.rand(1, 3, 32, 48)
    coords = torch.rand(1, 9, 2) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = tiny.encode(image)
        fused = tiny.decode(feats, coords, backend="cpp")
        assert tuple(tiny.predict(image, output_size=(5, 7)).shape) == (1, 1, 5, 7)
    assert [m.dtype for m in feats.maps] == [torch.float32] * 3  # encode's documented contract
    # the same features through the plain-PyTorch reference, outside any autocast
    reference = tiny.decode(feats, coords, backend="torch")
    torch.testing.assert_close(fused, reference, rtol=0, atol=1e-5)


def test_the_released_layout_predicts_under_a_callers_autocast():
    """Its CNN map came out bf16 beside the ViT's float32 one: 'feature map 1 is torch.bfloat16'."""
    model = infinidepth.from_preset("official-tiny")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = model.encode(torch.rand(1, 3, 32, 48))
        depth = model.decode_grid(feats, (4, 6), backend="torch")
    assert [m.dtype for m in feats.maps] == [torch.float32, torch.float32]
    assert depth.shape == (1, 1, 4, 6) and torch.isfinite(depth).all()


def read_ply_colors(path):
    from plyfile import PlyData

    v = PlyData.read(str(path))["vertex"]
    return np.stack([v["red"], v["green"], v["blue"]], -1)


def test_write_ply_scales_float_colours_in_0_1(tmp_path):
    """sample_points gives colours as floats in [0, 1]; cast straight to uint8 they were all 0 (black)."""
    points = np.arange(12, dtype=np.float32).reshape(4, 3)
    colors = np.array([[0.0, 0.5, 1.0], [0.2, 0.4, 0.6], [1.0, 1.0, 1.0], [0.01, 0.99, 0.5]], np.float32)
    write_ply(tmp_path / "c.ply", torch.from_numpy(points), torch.from_numpy(colors))
    expected = [[0, 128, 255], [51, 102, 153], [255, 255, 255], [3, 252, 128]]  # round(255 c) by hand
    np.testing.assert_array_equal(read_ply_colors(tmp_path / "c.ply"), expected)


@pytest.mark.parametrize("points, colors, match", [
    (np.zeros((4, 3)), np.full((4, 3), 300), r"integer colors must be in 0\.\.255"),   # was wrapped to 44
    (np.zeros((4, 3)), np.full((4, 3), -1), r"integer colors must be in 0\.\.255"),    # was 255
    (np.zeros((4, 3)), np.full((4, 3), 1.5), r"float colors must be in \[0, 1\]"),
    (np.zeros((4, 3)), np.zeros((2, 3), np.uint8), r"must both be \[N, 3\], got \(4, 3\) and \(2, 3\)"),
    (np.zeros((4, 2)), np.zeros((4, 3), np.uint8), r"must both be \[N, 3\]"),           # was an IndexError
    (np.full((4, 3), np.nan), np.zeros((4, 3), np.uint8), "points contain NaN"),
])
def test_write_ply_refuses_colours_and_points_it_cannot_write(tmp_path, points, colors, match):
    with pytest.raises(ValueError, match=match):
        write_ply(tmp_path / "bad.ply", points, colors)
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left


def test_colorize_depth_refuses_nan_in_one_line():
    """A NaN made every percentile NaN and ended in an IndexError from the colour table."""
    with pytest.raises(ValueError, match="colorize_depth: depth contains NaN"):
        colorize_depth(np.array([[1.0, np.nan], [2.0, 3.0]], np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_relative_png16_refuses_non_finite_depth(bad):
    """The range [nan, nan] (or [1, inf]) mapped every pixel to 0 without a word."""
    with pytest.raises(ValueError, match="relative depth contains NaN or infinite values"):
        depth_to_png16(np.array([[1.0, 2.0], [3.0, bad]], np.float32), metric=False)


def test_paper_layout_checkpoint_missing_a_key_names_it(tmp_path, tiny):
    """A paper-layout file without one of the keys its shape is read from said 'its model
    description does not fit (KeyError: ...)': it has no description."""
    sd = {k: v for k, v in tiny.state_dict().items() if k != "reassemble.2.project.weight"}
    torch.save(sd, tmp_path / "m.pt")
    with pytest.raises(infinidepth.CheckpointError,
                       match=r"cannot read the paper model's shape .*missing 'reassemble\.2\.project\.weight'"):
        infinidepth.load_model(tmp_path / "m.pt")


def test_checkpoint_with_a_tensor_of_the_wrong_rank_is_a_checkpoint_error(tmp_path):
    """A 0-d rope_embed.periods raised a bare IndexError from the layout reader."""
    sd = dict(infinidepth.from_preset("official-tiny").state_dict())
    sd["pretrained.rope_embed.periods"] = torch.zeros(())
    torch.save(sd, tmp_path / "o.pt")
    with pytest.raises(infinidepth.CheckpointError, match="cannot read the ViT shape from keys under 'pretrained.'"):
        infinidepth.load_model(tmp_path / "o.pt")


def test_own_format_refuses_a_boolean_input_size(tmp_path, tiny):
    from safetensors.torch import save_file

    info = {"arch": tiny.arch, "config": tiny.config_dict(), "input_size": [True, 32]}
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(tmp_path / "m.safetensors"),
              metadata={"infinidepth": json.dumps(info)})
    with pytest.raises(infinidepth.CheckpointError, match=r"input_size must be \[H, W\], got \[True, 32\]"):
        infinidepth.load_model(tmp_path / "m.safetensors")


def test_grid_coords_refuses_fractional_sizes_and_negative_batches():
    """grid_coords(2.5, 3) gave 3 rows of centres spaced for 2.5; batch -1 gave batch 1."""
    with pytest.raises(TypeError, match="height must be an integer, got 2.5"):
        grid_coords(2.5, 3)
    with pytest.raises(ValueError, match="batch must be non-negative, got -1"):
        grid_coords(2, 3, -1)
    assert grid_coords(np.int64(1), 2).tolist() == [[[0.0, -0.5], [0.0, 0.5]]]  # (i + 0.5) / n * 2 - 1


@pytest.mark.parametrize("K", [None, "K", [[1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
                               torch.eye(3, dtype=torch.complex64)])
def test_intrinsics_that_are_not_real_matrices_are_named(K):
    """None and strings gave torch's 'must be real number, not NoneType'; complex entries lost their
    imaginary part with only a warning."""
    with pytest.raises(TypeError, match=r"intrinsics must be \[3, 3\] or \[B, 3, 3\] real numbers"):
        check_intrinsics(K, 1)


def test_camera_to_world_that_is_not_a_real_matrix_is_named():
    with pytest.raises(TypeError, match=r"camera_to_world must be finite \[1, 4, 4\] or \[4, 4\] real numbers"):
        check_camera_to_world(None, 1)
    T = check_camera_to_world(np.eye(4), 2)
    assert T.dtype == torch.float32 and T.shape == (2, 4, 4) and torch.equal(T[1], torch.eye(4))
