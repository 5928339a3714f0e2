"""File formats: each reader on files written here in that format; writers are atomic."""

import numpy as np
import pytest
from PIL import Image

from infinidepth.io import (
    colorize_depth,
    InputError,
    atomic_path,
    check_depth_values,
    depth_to_png16,
    read_depth,
    read_image,
    write_npy,
    write_ply,
)


@pytest.fixture
def depth():
    return (np.arange(12, dtype=np.float32).reshape(3, 4) + 1) * 0.25


def write_format(path, depth):
    suffix = path.suffix
    if suffix == ".npy":
        np.save(path, depth)
    elif suffix == ".npz":
        np.savez(path, depth=depth, other=np.zeros(2))
    elif suffix == ".png":
        from PIL import Image

        Image.fromarray(np.round(depth * 1000).astype(np.uint16)).save(path)
    elif suffix == ".exr":
        import OpenEXR

        OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}, {"Z": depth}).write(str(path))
    elif suffix == ".h5":
        import h5py

        with h5py.File(path, "w") as f:
            f.create_dataset("meta/scale", data=np.ones(1))
            f.create_dataset("data", data=np.zeros_like(depth))     # listed before depth: not read in its place
            f.create_dataset("depth", data=depth)


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".png", ".exr", ".h5"])
def test_depth_readers(tmp_path, depth, suffix):
    path = tmp_path / f"d{suffix}"
    write_format(path, depth)
    got = read_depth(path)
    assert got.dtype == np.float32 and got.shape == (3, 4)
    np.testing.assert_allclose(got, depth, atol=1e-3 if suffix == ".png" else 0)


def test_exr_depth_of_a_layered_render_is_its_z_channel(tmp_path, depth):
    # a render's multilayer EXR: colour and alpha in one layer, z-depth in another; the colour (its
    # red channel, first in the file) is not depth
    import OpenEXR

    grey = np.full_like(depth, 0.5)
    channels = {f"ViewLayer.Combined.{c}": grey for c in "RGBA"} | {"ViewLayer.Depth.Z": depth}
    OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}, channels).write(
        str(tmp_path / "render.exr"))
    np.testing.assert_array_equal(read_depth(tmp_path / "render.exr"), depth)


def test_depth_reader_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_depth(tmp_path / "missing.npy")
    (tmp_path / "d.tiff").write_bytes(b"x")
    with pytest.raises(InputError, match="unsupported depth format"):
        read_depth(tmp_path / "d.tiff")
    (tmp_path / "broken.npy").write_bytes(b"garbage")
    with pytest.raises(InputError, match="cannot read depth file"):
        read_depth(tmp_path / "broken.npy")
    np.save(tmp_path / "rgb.npy", np.zeros((4, 4, 3), np.float32))
    with pytest.raises(InputError, match="single-channel"):
        read_depth(tmp_path / "rgb.npy")
    from PIL import Image

    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "eight.png")
    with pytest.raises(InputError, match="16-bit"):
        read_depth(tmp_path / "eight.png")
    np.save(tmp_path / "complex.npy", np.ones((4, 4), np.complex64))  # not silently its real part
    with pytest.raises(InputError, match="real numbers"):
        read_depth(tmp_path / "complex.npy")
    np.save(tmp_path / "huge.npy", np.full((4, 4), 1e300))  # not silently infinite
    with pytest.raises(InputError, match="beyond float32's range"):
        read_depth(tmp_path / "huge.npy")


@pytest.mark.parametrize("bad,match", [(np.nan, "NaN"), (-1.0, "negative"), (np.inf, "infinite")])
def test_depth_value_checks(depth, bad, match):
    depth[1, 1] = bad
    with pytest.raises(InputError, match=match):
        check_depth_values(depth, "sparse depth x")
    with pytest.raises(InputError, match="no valid"):
        check_depth_values(np.zeros((2, 2)), "sparse depth x")


def test_read_image_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "none.png")
    (tmp_path / "fake.png").write_text("not an image")
    with pytest.raises(InputError, match="cannot read image"):
        read_image(tmp_path / "fake.png")


def test_read_image_scales_high_bit_depth_greyscale(tmp_path):
    # Pillow's convert("RGB") clips 16-bit, 32-bit and float greyscale to 255: a white picture.
    rng = np.random.default_rng(0)
    g16 = rng.integers(0, 65536, (9, 13)).astype(np.uint16)
    g32 = rng.integers(0, 65536, (9, 13)).astype(np.int32)
    f01 = rng.random((9, 13)).astype(np.float32)
    for name, array, scale in (("g16.png", g16, 255 / 65535), ("g32.tif", g32, 255 / 65535), ("f.tif", f01, 255)):
        Image.fromarray(array).save(tmp_path / name)
        assert Image.open(tmp_path / name).mode in ("I;16", "I", "F"), name
        rgb = read_image(tmp_path / name)
        assert rgb.shape == (9, 13, 3) and rgb.dtype == np.uint8
        expected = np.rint(array.astype(np.float64) * scale)
        assert np.abs(rgb.astype(np.float64) - expected[..., None]).max() <= 0.5, name
        assert rgb.min() < 20 and rgb.max() > 235, name                              # the full range, not clipped
    Image.fromarray(f01 * 3).save(tmp_path / "f3.tif")
    with pytest.raises(InputError, match=r"floating-point greyscale with values in \[.*\]; expected \[0, 1\]"):
        read_image(tmp_path / "f3.tif")
    Image.fromarray(np.full((4, 4), 70000, np.int32)).save(tmp_path / "big.tif")
    with pytest.raises(InputError, match="expected 16-bit values"):
        read_image(tmp_path / "big.tif")


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.npy"
    write_npy(target, np.ones(3))
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    np.testing.assert_array_equal(np.load(target), np.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["out.npy"]


def test_png16_encodings(depth):
    mm, how = depth_to_png16(depth, metric=True)
    assert mm.dtype == np.uint16 and mm[0, 0] == 250 and how == "millimetres"
    rel, how = depth_to_png16(depth, metric=False)
    assert rel.min() == 0 and rel.max() == 65535 and "relative" in how


def test_png16_metric_depth_rounds_to_the_nearest_millimetre_and_saturates():
    depth = np.array([[0.0, 0.0004, 0.0016, 1.2344], [1.2346, 65.535, 70.0, 1e6]], np.float32)
    mm, _ = depth_to_png16(depth, metric=True)
    np.testing.assert_array_equal(mm, [[0, 0, 2, 1234], [1235, 65535, 65535, 65535]])      # not wrapped past 65535
    rel, how = depth_to_png16(np.array([[1.0, 2.0], [3.0, 5.0]], np.float32), metric=False)
    np.testing.assert_array_equal(rel, [[0, 16384], [32768, 65535]])        # (d - 1) / 4 of 65535, rounded
    assert how == "relative depth, 0..65535 spans [1, 5]"


def test_atomic_writes_get_the_permissions_open_would_give(tmp_path):
    import os

    old = os.umask(0o027)
    try:
        write_npy(tmp_path / "a.npy", np.ones(2))
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    for name in ("a.npy", "b.bin"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640, name          # 0o666 less the umask, not 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "b.bin"]


def test_backproject_and_ply_round_trip(tmp_path, depth):
    import torch

    from infinidepth.ops import grid_coords
    from infinidepth.sampling import backproject

    K = torch.tensor([[[2.0, 0, 2.0], [0, 4.0, 1.5], [0, 0, 1]]])
    pts = backproject(torch.from_numpy(depth).reshape(1, -1), grid_coords(3, 4), K, (3, 4))[0].numpy()
    # pixel (1, 3): centre (3.5, 1.5), depth 2.0 -> x = (3.5 - 2) / 2 * 2, y = 0, z = 2
    np.testing.assert_allclose(pts[1 * 4 + 3], [1.5, 0.0, 2.0])
    from plyfile import PlyData

    colors = np.arange(36, dtype=np.uint8).reshape(12, 3)
    write_ply(tmp_path / "p.ply", pts, colors)
    v = PlyData.read(str(tmp_path / "p.ply"))["vertex"]
    np.testing.assert_allclose(np.stack([v["x"], v["y"], v["z"]], -1), pts)
    np.testing.assert_array_equal(np.stack([v["red"], v["green"], v["blue"]], -1), colors)


def test_colorize_depth_shared_scale():
    depth = np.linspace(1.0, 10.0, 64 * 48, dtype=np.float32).reshape(48, 64)
    # On its own scale a map's picture does not change when everything is twice as far ...
    assert np.array_equal(colorize_depth(2 * depth), colorize_depth(depth))
    assert np.array_equal(colorize_depth(depth, reference=depth), colorize_depth(depth))
    # ... on the reference's scale it does: farther is bluer (Spectral: far is blue).
    far = colorize_depth(2 * depth, reference=depth).astype(int)
    near = colorize_depth(depth).astype(int)
    assert (far[..., 2] - far[..., 0]).mean() > (near[..., 2] - near[..., 0]).mean() + 20
    with pytest.raises(ValueError, match="reference"):
        colorize_depth(depth, reference=np.zeros(0))


def test_read_image_applies_exif_orientation_and_gives_writable_rgb(tmp_path):
    """A phone photo stored sideways with EXIF orientation 6 is read upright (turned 90 degrees
    clockwise); alpha, palette and greyscale pictures all come back as RGB uint8 [H, W, 3] that can
    be written to (Pillow's own arrays are read-only)."""
    rgb = np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(tmp_path / "sideways.png", exif=exif)
    np.testing.assert_array_equal(read_image(tmp_path / "sideways.png"), np.rot90(rgb, -1))
    grey = rgb[..., 0]
    pictures = {"rgba.png": (Image.fromarray(np.dstack([rgb, np.full((4, 6), 7, np.uint8)])), rgb),
                "grey.png": (Image.fromarray(grey), np.repeat(grey[..., None], 3, axis=2)),
                "palette.png": (Image.fromarray(rgb).quantize(colors=256, method=Image.Quantize.MAXCOVERAGE), None)}
    for name, (picture, want) in pictures.items():
        picture.save(tmp_path / name)
        got = read_image(tmp_path / name)
        assert got.shape == (4, 6, 3) and got.dtype == np.uint8 and got.flags.writeable, name
        if want is None:
            want = np.asarray(picture.convert("RGB"))
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_read_image_greyscale_range_bounds(tmp_path):
    """The accepted ranges are closed at both ends: 0 and 65535 (white) are fine, anything below 0
    is refused (not wrapped around into bright uint8 values)."""
    edge = np.array([[0, 65535]], np.int32)
    Image.fromarray(edge).save(tmp_path / "edge.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "edge.tif")[..., 0], [[0, 255]])
    Image.fromarray(np.array([[0.0, 1.0]], np.float32)).save(tmp_path / "edge_f.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "edge_f.tif")[..., 0], [[0, 255]])
    Image.fromarray(np.array([[-3, 100]], np.int32)).save(tmp_path / "negative.tif")
    with pytest.raises(InputError, match=r"integer greyscale with values in \[-3, 100\]"):
        read_image(tmp_path / "negative.tif")
    Image.fromarray(np.array([[-0.25, 0.5]], np.float32)).save(tmp_path / "negative_f.tif")
    with pytest.raises(InputError, match=r"floating-point greyscale with values in \[-0.25, 0.5\]"):
        read_image(tmp_path / "negative_f.tif")


def test_depth_arrays_are_found_by_name_and_squeezed(tmp_path, depth):
    """.npz: the array named depth, else data, else the first saved; a [1, H, W] array is the map."""
    np.savez(tmp_path / "both.npz", data=np.zeros_like(depth), depth=depth)
    np.testing.assert_array_equal(read_depth(tmp_path / "both.npz"), depth)
    np.savez(tmp_path / "data.npz", aaa=np.zeros(2), data=depth)
    np.testing.assert_array_equal(read_depth(tmp_path / "data.npz"), depth)
    np.savez(tmp_path / "unnamed.npz", depth, np.zeros_like(depth))       # arr_0, arr_1
    np.testing.assert_array_equal(read_depth(tmp_path / "unnamed.npz"), depth)
    np.save(tmp_path / "batched.npy", depth[None])
    np.testing.assert_array_equal(read_depth(tmp_path / "batched.npy"), depth)
    np.savez(tmp_path / "empty.npz")
    with pytest.raises(InputError, match="empty .npz"):
        read_depth(tmp_path / "empty.npz")


def test_depth_reader_preferences_and_dtype(tmp_path, depth):
    """EXR: Z before depth before Y before R; HDF5: the first dataset of the preferred name; every
    reader's map comes back as float32 whatever the file holds."""
    import h5py
    import OpenEXR

    grey = np.full_like(depth, 0.5)
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    for name, channels in (("z.exr", {"R": grey, "Y": grey, "Z": depth}), ("d.exr", {"Y": grey, "depth": depth}),
                           ("y.exr", {"R": grey, "Y": depth})):
        OpenEXR.File(header, channels).write(str(tmp_path / name))
        np.testing.assert_array_equal(read_depth(tmp_path / name), depth, err_msg=name)
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f.create_dataset("a/depth", data=depth)
        f.create_dataset("b/depth", data=np.zeros_like(depth))
    np.testing.assert_array_equal(read_depth(tmp_path / "two.h5"), depth)
    for dtype in (np.float64, np.uint16, np.int32):
        np.save(tmp_path / "d.npy", (depth * 4).astype(dtype))
        got = read_depth(tmp_path / "d.npy")
        assert got.dtype == np.float32, dtype
        np.testing.assert_array_equal(got, depth * 4)


def test_png16_of_a_constant_relative_map_is_zero_without_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # no 0 / 0 (NaN cast to uint16)
        rel, how = depth_to_png16(np.full((2, 3), 3.0, np.float32), metric=False)
    np.testing.assert_array_equal(rel, np.zeros((2, 3), np.uint16))
    assert how == "relative depth, 0..65535 spans [3, 3]"


def test_colorize_depth_clips_the_outer_percentiles_and_blocks_cover_every_row():
    # 0.1% of the map far away does not squeeze the rest into half the colours: the far end of the
    # bulk (beyond the 2nd percentile of inverse depth) gets the same, last colour as the outlier
    depth = np.linspace(1.0, 2.0, 100 * 100).reshape(100, 100)
    depth[0, 0] = 1000.0
    picture = colorize_depth(depth)
    np.testing.assert_array_equal(picture[-1, -1], picture[0, 0])
    np.testing.assert_array_equal(picture[0, 1], picture[0, 50])          # both nearer than the 98th percentile
    # a map of several blocks of rows (1 M pixels each) is coloured in every row: row by row on the
    # same scale gives the same picture
    wide = np.random.default_rng(0).uniform(1, 5, (3, 400_000)).astype(np.float32)
    rows = [colorize_depth(wide[i : i + 1], reference=wide) for i in range(3)]
    np.testing.assert_array_equal(colorize_depth(wide), np.concatenate(rows))


def test_read_image_names_a_decompression_bomb(tmp_path, monkeypatch):
    """Pillow refuses an image of more than 2 * MAX_IMAGE_PIXELS pixels with its own exception type
    (not an OSError): it is reported as bad input, with the way to read a genuine one."""
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    with pytest.raises(InputError, match=r"cannot read image .*big\.png.*raise PIL\.Image\.MAX_IMAGE_PIXELS"):
        read_image(tmp_path / "big.png")


def test_atomic_writes_reach_the_disk_before_the_rename(tmp_path, monkeypatch):
    """The temporary is fsynced before it is renamed onto the target: without it a power cut (or a
    kernel crash) soon after can leave the rename on disk but not the data (an empty or partial file
    where the good one was), on file systems that do not order the two themselves (XFS, ext4
    without auto_da_alloc)."""
    import os

    events = []
    fsync, replace = os.fsync, os.replace

    def recorded_fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        return fsync(fd)

    def recorded_replace(src, dst):
        events.append(("replace", os.stat(src).st_ino))
        return replace(src, dst)

    monkeypatch.setattr(os, "fsync", recorded_fsync)
    monkeypatch.setattr(os, "replace", recorded_replace)
    write_npy(tmp_path / "a.npy", np.ones(3))
    assert [e[0] for e in events][-1] == "replace" and ("fsync", events[-1][1]) in events[:-1], events
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.ones(3))


def test_atomic_write_to_a_name_near_the_length_limit(tmp_path):
    """A file name open() accepts (5 bytes short of the file system's limit, 255 on most) is written:
    the temporary beside it used to be named after the whole stem plus a prefix and a random part,
    past the limit."""
    import os

    name = "d" * (os.pathconf(tmp_path, "PC_NAME_MAX") - 9) + ".npy"
    write_npy(tmp_path / name, np.ones(2))
    np.testing.assert_array_equal(np.load(tmp_path / name), np.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == [name]
