"""What every implicit depth model offers: encode once, decode anywhere, predict at any size."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils import _pytree as pytree

from infinidepth.ops import PRECISIONS, pixel_centers
from infinidepth.ops.gather import as_int, check_coords, require
from infinidepth.ops.implicit_decode import check_cpu_precision, resolve_decoder_backend
from infinidepth.sampling.camera import check_size
from infinidepth.sampling.triangle import FAR_CUT

# The image spans [-1, 1]. A query further out than +-2 lies more than a whole image outside it
# (where the released decoder clamps to the edge and the paper's reads zero-padded maps): in
# practice that is pixel coordinates passed by mistake, refused rather than answered with garbage.
MAX_QUERY_COORD = 2.0

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: queries in flight at once on the plain-PyTorch reference path of predict (its memory bound);
#: the fused kernels need no such bound
REFERENCE_CHUNK = 65536


@dataclass
class SampledPoints:
    """Points of the depth field at budgeted query positions (``model.sample_points``)."""

    coords: torch.Tensor  # [B, n, 2] normalised (y, x) query positions
    depth: torch.Tensor  # [B, n] depth re-queried there
    points: torch.Tensor  # [B, n, 3] camera frame (x right, y down, z forward)
    points_world: torch.Tensor  # [B, n, 3] after camera_to_world (the camera frame when none was given)
    colors: torch.Tensor  # [B, n, 3] the image's RGB in [0, 1], bilinear at the query positions
    depth_map: torch.Tensor  # [B, 1, H, W] depth at the image's pixel centres, which the sampler weighed
    features: "Features"  # the encoding every query read (a GS head reads it too)


@dataclass
class Features:
    """The result of one encoder pass: feature maps the decoder gathers from, and per-image state."""

    maps: list[torch.Tensor]
    image_size: tuple[int, int]
    disparity_scale: torch.Tensor | None = None  # [B], the sensor model's median (prompt normalisation)
    # [B, C, h, w] the released models' last-layer ViT tokens before any depth prompt: what the released
    # GS heads read (the decoder reads maps[0], the same tensor when there is no prompt)
    tokens: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return self.maps[0].shape[0]


# Features is a pytree node, so that it crosses a program's boundary: an exported ``encode`` returns
# it and an exported ``decode`` takes it (README, "Deploying with torch.export"). Its tensors are the
# node's children; ``image_size`` is static, part of the node's spec (as the maps' shapes are); and
# ``extras``, the eager fold cache, is left out: it holds no input of the program, and with it the
# spec would change once an eager decode has filled it (the program would refuse those features).
def _features_children(f: Features) -> tuple[list, tuple[int, int]]:
    return [f.maps, f.disparity_scale, f.tokens], tuple(f.image_size)


def _features_children_with_keys(f: Features):
    children, context = _features_children(f)
    keys = [pytree.GetAttrKey(name) for name in ("maps", "disparity_scale", "tokens")]
    return list(zip(keys, children)), context


def _features_from_children(children, image_size) -> Features:
    maps, disparity_scale, tokens = children
    return Features(list(maps), tuple(image_size), disparity_scale, tokens)


pytree.register_pytree_node(
    Features,
    _features_children,
    _features_from_children,
    serialized_type_name=f"{Features.__module__}.{Features.__qualname__}",
    # a saved program's spec keeps image_size through JSON, which has no tuples
    to_dumpable_context=lambda size: json.dumps(list(size)),
    from_dumpable_context=lambda text: tuple(json.loads(text)),
    flatten_with_keys_fn=_features_children_with_keys,
)


def check_image(image: torch.Tensor, multiple: int) -> None:
    """A float image [B, 3, H, W] in [0, 1], H and W multiples of ``multiple`` (the ViT patch)."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor [B, 3, H, W], got {type(image).__name__}")
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"image must have shape [B, 3, H, W], got {tuple(image.shape)}")
    if image.shape[0] == 0:
        raise ValueError(f"image batch is empty: shape {tuple(image.shape)}")
    if not image.is_floating_point():
        raise TypeError(f"image must be a float tensor with values in [0, 1], got {image.dtype}")
    H, W = image.shape[-2:]
    if H % multiple or W % multiple or H == 0 or W == 0:
        raise ValueError(f"image height and width must be positive multiples of {multiple}, got {H}x{W}")
    require(torch.isfinite(image).all(), "image contains NaN or infinite values")
    lo, hi = image.min(), image.max()

    def out_of_range(eager):
        return "image values must be in [0, 1]" + (f", got range [{float(lo):.3g}, {float(hi):.3g}]" if eager else "")

    require((lo >= -1e-3) & (hi <= 1 + 1e-3), out_of_range)


def inference(fn):
    """``torch.no_grad()`` for the models' inference entry points, which also step out of
    ``torch.inference_mode`` when the caller is in it: tensors made there carry no version counter,
    which the decoders' fold cache reads, and no autograd, which ``with_grad`` derivatives (and
    ``sample_points``' normals) are computed by. Inside, the call runs as under ``no_grad`` alone."""
    fn = torch.no_grad()(fn)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        if torch.compiler.is_compiling() or not torch.is_inference_mode_enabled():
            return fn(*args, **kwargs)
        with torch.inference_mode(False):
            return fn(*args, **kwargs)

    return run


class ImplicitDepthModel(nn.Module):
    """Base of the models: subclasses define ``encode``, ``decode_raw`` and ``to_depth``."""

    arch: str = ""
    #: what ``decode`` returns, for people and for the CLI
    output_space: str = ""
    #: where a relative prediction is aligned to a reference ("disparity", "log_depth"); None if metric
    alignment: str | None = None

    def __init__(self):
        super().__init__()
        #: decoder backend used when a call does not name one ("auto": the fastest measured here: cpp
        #: on the CPU, torch on a GPU; ops.implicit_decode.resolve_decoder_backend)
        self.backend = "auto"
        #: arithmetic of inference: "fp32", or "bf16" / "fp16" (the encoder under autocast, the
        #: decoder's matrix products on 16-bit operands with fp32 accumulation); on the CPU fp32, or
        #: bf16 where the CPU has AVX512_BF16
        self.precision = "fp32"
        #: the network input (H, W) the model was trained at, when known (saved with the model); the
        #: CLI feeds images at that many pixels by default
        self.input_size: tuple[int, int] | None = None
        self.register_buffer("_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    # -- to be provided by subclasses (and a ``config`` dataclass with ``to_dict``) -------------
    def config_dict(self) -> dict:
        return self.config.to_dict()

    def features(self, image: torch.Tensor, sparse_depth: torch.Tensor | None = None) -> Features:
        """The encoder pass, differentiable (training); :meth:`encode` is the same without autograd."""
        raise NotImplementedError

    def decode_raw(self, feats: Features, coords: torch.Tensor, backend: str, chunk: int | None, with_grad: bool = False):
        """Raw output ``[B, N]``, or with ``with_grad`` also its derivative ``[B, N, 2]`` w.r.t. (y, x)."""
        raise NotImplementedError

    def to_depth(self, raw: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------
    @inference
    def encode(self, image: torch.Tensor, sparse_depth: torch.Tensor | None = None) -> Features:
        """One encoder pass per image: the features every later query reads (float32 maps, also
        when :attr:`precision` runs the encoder in 16 bits)."""
        weights = self._mean.dtype
        if weights != torch.float32:
            raise TypeError(f"the model's weights are {weights}; encode runs on float32 weights (model.float()), "
                            "with model.precision = 'bf16' for 16-bit arithmetic")
        dtype = self.low_precision_dtype()
        if dtype is None:  # (a caller's own torch.autocast may still run the encoder in 16 bits)
            feats = self.features(image, sparse_depth)
        else:
            with torch.autocast(self.device.type, dtype=dtype):
                feats = self.features(image, sparse_depth)
        feats.maps = [m.float() for m in feats.maps]
        feats.tokens = None if feats.tokens is None else feats.tokens.float()
        return feats

    def low_precision_dtype(self) -> torch.dtype | None:
        """The 16-bit type of :attr:`precision`, None for fp32; a clear error where it cannot run."""
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.device.type == "cpu":
            check_cpu_precision(self.precision)
        elif PRECISIONS[self.precision] is not None and self.device.type != "cuda":
            raise ValueError(f"precision {self.precision} needs a CUDA device or a CPU (it is on {self.device})")
        return PRECISIONS[self.precision]

    def forward(self, image: torch.Tensor, coords: torch.Tensor, sparse_depth: torch.Tensor | None = None) -> torch.Tensor:
        """Training forward: raw output ``[B, N]`` at ``coords``, differentiable end to end (the
        decoder runs as the plain-PyTorch reference: the fused kernels have no backward)."""
        feats = self.features(image, sparse_depth)
        check_coords(coords, feats.batch, MAX_QUERY_COORD)
        return self.decode_raw(feats, coords.to(self.device), "torch", None)

    @property
    def device(self) -> torch.device:
        return self._mean.device

    @property
    def patch_size(self) -> int:
        """Network inputs are multiples of this: the ViT's patch (16 for the released models)."""
        return (getattr(self, "encoder", None) or self.pretrained).patch_size

    def resolved_backend(self, backend: str | None = None) -> str:
        return resolve_decoder_backend(backend or self.backend, self.device)

    @inference
    def decode(self, feats: Features, coords: torch.Tensor, backend: str | None = None, chunk: int | None = 65536,
               with_grad: bool = False):
        """Raw network output at ``coords`` ``[B, N, 2]`` (normalised y, x) -> ``[B, N]``; with
        ``with_grad`` also its exact derivative ``[B, N, 2]`` with respect to (y, x)."""
        if not isinstance(feats, Features):
            raise TypeError("decode expects the Features returned by model.encode(image)")
        check_coords(coords, feats.batch, MAX_QUERY_COORD)
        if chunk is not None and as_int(chunk, "chunk") <= 0:
            raise ValueError(f"chunk must be a positive number of queries, got {chunk}")
        coords = coords.to(self.device)
        if not torch.compiler.is_compiling() and coords.is_inference():
            coords = coords.clone()  # made under torch.inference_mode: autograd (with_grad) refuses it
        return self.decode_raw(feats, coords, self.resolved_backend(backend), chunk, with_grad)

    @inference
    def decode_depth(self, feats: Features, coords: torch.Tensor, backend: str | None = None, with_grad: bool = False):
        """Depth at ``coords`` ``[B, N]``; with ``with_grad`` also d depth / d (y, x) ``[B, N, 2]`` (the
        decoder's derivative through :meth:`to_depth` by the chain rule)."""
        if not with_grad:
            return self.to_depth(self.decode(feats, coords, backend=backend))
        raw, grad = self.decode(feats, coords, backend=backend, with_grad=True)
        with torch.enable_grad():
            r = raw.detach().float().requires_grad_(True)
            depth = self.to_depth(r)
            (slope,) = torch.autograd.grad(depth.sum(), r)
        return depth.detach(), slope[..., None] * grad.float()

    @torch.no_grad()
    def predict(
        self,
        image: torch.Tensor,
        output_size: tuple[int, int] | None = None,
        sparse_depth: torch.Tensor | None = None,
        backend: str | None = None,
        tile: int | None = None,
        progress: bool = False,
        region: tuple[int, int, int, int] | None = None,
        out=None,
    ):
        """Depth ``[B, 1, H_out, W_out]`` on a dense grid of any size (default: the input's).

        Memory stays bounded whatever the output size: the queries of ``tile`` output pixels at a
        time (default 2**22 on a GPU, 2**18 on the CPU; whole rows) are generated on the device,
        decoded in one fused pass (the torch reference: ``REFERENCE_CHUNK`` queries at a time) and
        written into the output, so beyond the output itself only one tile's coordinates and depths
        exist at once. The result does not depend on ``tile``.

        ``region = (y0, x0, y1, x1)``: only output pixels ``[y0:y1, x0:x1]`` of the ``output_size``
        grid (a zoom into part of the image at very high resolution, without computing the rest).
        ``out``: where to write, instead of a new tensor: a tensor ``[B, 1, h, w]`` on any device, or
        for ``B = 1`` a NumPy array ``[h, w]`` (e.g. a memory-mapped ``.npy`` larger than memory);
        ``(h, w)`` is the region's size. Returns the output.
        """
        feats = self.encode(image, sparse_depth=sparse_depth)
        size = tuple(image.shape[-2:]) if output_size is None else output_size
        return self.decode_grid(feats, size, backend, tile, progress, region, out)

    @torch.no_grad()
    def decode_grid(self, feats: Features, output_size: tuple[int, int], backend: str | None = None,
                    tile: int | None = None, progress: bool = False, region=None, out=None):
        """The decoding half of :meth:`predict`, for features already encoded."""
        H, W = check_size(output_size, "output_size")
        y0, x0, y1, x1 = check_region(region, (H, W))
        B, h, w = feats.batch, y1 - y0, x1 - x0
        tile = as_int(tile, "tile") if tile is not None else default_tile(self.device)
        if tile <= 0:
            raise ValueError(f"tile must be positive, got {tile}")
        out = self._output(out, B, h, w)
        rows_per_tile = max(1, tile // w)
        steps = range(y0, y1, rows_per_tile)
        if progress:
            from tqdm import tqdm

            steps = tqdm(steps, desc=f"decoding {h}x{w}" + (f" of {H}x{W}" if (h, w) != (H, W) else ""),
                         unit="tile", total=len(steps))
        for r0 in steps:
            r1 = min(y1, r0 + rows_per_tile)
            raw = self.decode(feats, _grid(H, W, r0, r1, x0, x1, B, self.device), backend=backend, chunk=REFERENCE_CHUNK)
            depth = self.to_depth(raw).float().reshape(B, 1, r1 - r0, w)
            if isinstance(out, torch.Tensor):
                out[:, :, r0 - y0 : r1 - y0] = depth.to(out.device)
            else:
                out[r0 - y0 : r1 - y0] = depth[0, 0].cpu().numpy()
        return out

    def _output(self, out, B: int, h: int, w: int):
        if out is None:
            try:
                return torch.empty((B, 1, h, w), device=self.device, dtype=torch.float32)
            except RuntimeError as e:  # torch.OutOfMemoryError (CUDA) is one too
                raise MemoryError(
                    f"the output [{B}, 1, {h}, {w}] float32 ({B * h * w * 4 / 2**30:.1f} GiB) does not fit on "
                    f"{self.device}; pass out= (a tensor elsewhere, or for one image a memory-mapped .npy from "
                    "numpy.lib.format.open_memmap, as the CLI's --out does) or a region="
                ) from e
        if isinstance(out, torch.Tensor):
            if tuple(out.shape) != (B, 1, h, w) or out.dtype != torch.float32:
                raise ValueError(f"out must be a float32 tensor [{B}, 1, {h}, {w}], got {out.dtype} {tuple(out.shape)}")
            if out.device.type == "meta":
                raise ValueError("out is on the meta device, which holds no values")
            if any(st == 0 and n > 1 for st, n in zip(out.stride(), out.shape)):
                raise ValueError("out has overlapping elements (an expanded tensor); pass one with its own memory")
            return out
        import numpy as np

        if B != 1 or not isinstance(out, np.ndarray) or out.shape != (h, w) or out.dtype != np.float32:
            raise ValueError(f"a NumPy out must be float32 [{h}, {w}] for a batch of 1, got "
                             f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')} for a batch of {B}")
        if not out.flags.writeable:
            raise ValueError("the NumPy out is read-only (a memory map opened with mode 'r'?); open it with 'r+' or 'w+'")
        return out

    @inference
    def sample_points(
        self,
        image: torch.Tensor,
        n: int,
        intrinsics,
        camera_to_world=None,
        strategy: str = "surface_area",
        seed: int | None = None,
        sparse_depth: torch.Tensor | None = None,
        backend: str | None = None,
        max_depth: float | None = FAR_CUT,
    ) -> SampledPoints:
        """``n`` points per image spread evenly over the visible surfaces, as the GS head needs.

        Two passes over the one encoding: dense depth and its exact derivative at the image's pixel
        centres (-> normals -> surface-area weights), then depth at the ``n`` budgeted queries.
        ``intrinsics`` ``[3, 3]`` or ``[B, 3, 3]`` in pixels of ``image``; ``camera_to_world``
        ``[4, 4]`` or ``[B, 4, 4]`` (optional). ``strategy``: ``"surface_area"`` (ours) or
        ``"triangle"`` (the released triangle-area sampler, for comparison). Deterministic for a seed.
        Pixels at depth ``max_depth`` or more (in the model's units) are not sampled: the released
        sampler's far cut, 90, which keeps a sky at the released models' disparity floor (depth 200)
        from taking nearly every point; None samples them too.
        """
        from infinidepth.ops import grid_coords
        from infinidepth.ops.coords import clamp_to_pixel_centres
        from infinidepth.ops.gather import bilinear_gather_reference
        from infinidepth.sampling import (backproject, check_camera_to_world, check_intrinsics, surface_area_sample,
                                          surface_normals, to_world, triangle_area_sample)

        if strategy not in ("surface_area", "triangle"):
            raise ValueError(f"strategy must be 'surface_area' or 'triangle', got {strategy!r}")
        check_image(image, self.patch_size)
        B, _, H, W = image.shape
        K = check_intrinsics(intrinsics, B, self.device)
        if camera_to_world is not None:
            camera_to_world = check_camera_to_world(camera_to_world, B, self.device)
        feats = self.encode(image, sparse_depth=sparse_depth)
        dense = grid_coords(H, W, B, self.device)
        if strategy == "surface_area":
            depth, grad = self.decode_depth(feats, dense, backend=backend, with_grad=True)
            depth_map = depth.reshape(B, 1, H, W)
            normals = surface_normals(depth_map, grad.reshape(B, H, W, 2).permute(0, 3, 1, 2), K)
            coords = surface_area_sample(depth_map, normals, K, n, seed=seed, backend=self.resolved_backend(backend),
                                         max_depth=max_depth)
        else:
            depth_map = self.decode_depth(feats, dense, backend=backend).reshape(B, 1, H, W)
            coords = triangle_area_sample(depth_map, K, n, seed=seed, max_depth=max_depth)
        depth = self.decode_depth(feats, coords, backend=backend)
        points = backproject(depth, coords, K, (H, W))
        # the image's colours with its border pixels repeated outward (zero padding would darken the edges)
        colors = bilinear_gather_reference(image.to(self.device, torch.float32), clamp_to_pixel_centres(coords, H, W)).clamp(0, 1)
        return SampledPoints(coords, depth, points, to_world(points, camera_to_world), colors, depth_map, feats)


def default_tile(device: torch.device) -> int:
    """Output pixels :meth:`ImplicitDepthModel.decode_grid` decodes per tile by default (whole rows)."""
    return 2**22 if torch.device(device).type == "cuda" else 2**18


def int_tuple(values, n: int, message: str) -> tuple[int, ...]:
    """``n`` integers from a sequence (a tuple, a list, a 1-d tensor or array); ``ValueError(message)``
    for anything else, bools and floats included."""
    try:
        ints = tuple(as_int(v, "") for v in values)
    except TypeError:
        raise ValueError(message) from None
    if len(ints) != n:
        raise ValueError(message)
    return ints


def check_region(region, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(y0, x0, y1, x1)`` inside an ``(H, W)`` grid, non-empty; None means the whole grid."""
    H, W = size
    if region is None:
        return 0, 0, H, W
    y0, x0, y1, x1 = int_tuple(region, 4, f"region must be (y0, x0, y1, x1) in output pixels, got {region!r}")
    if not (0 <= y0 < y1 <= H and 0 <= x0 < x1 <= W):
        raise ValueError(f"region (y0={y0}, x0={x0}, y1={y1}, x1={x1}) must satisfy 0 <= y0 < y1 <= {H} and "
                         f"0 <= x0 < x1 <= {W} (the output is {H}x{W})")
    return y0, x0, y1, x1


def _grid(H: int, W: int, y0: int, y1: int, x0: int, x1: int, batch: int, device) -> torch.Tensor:
    """Query coordinates of output pixels [y0:y1, x0:x1] of an H x W grid (no full-size grid is built)."""
    ys = pixel_centers(H, device)[y0:y1]
    xs = pixel_centers(W, device)[x0:x1]
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gy, gx], dim=-1).reshape(1, -1, 2).expand(batch, -1, -1)
