"""Multi-scale bilinear feature gathering: ``bilinear_gather(feat, coords)`` -> ``[B, N, C]``.

Backends: ``torch`` (grid_sample: the reference), ``cpp`` and ``cuda`` (``torch.ops.infinidepth``,
built from csrc/), ``triton`` (kernels/). ``auto`` picks the compiled kernel of the tensor's device.
"""

from __future__ import annotations

import operator
import os

import torch
import torch.nn.functional as F

BACKENDS = ("torch", "cpp", "cuda", "triton")

try:  # the compiled extension registers torch.ops.infinidepth.* on import
    from infinidepth import _C  # noqa: F401

    HAS_EXTENSION = True
except ImportError:  # pragma: no cover - a source checkout that was never built
    HAS_EXTENSION = False


def has_cuda_kernels() -> bool:
    return HAS_EXTENSION and torch._C._dispatch_has_kernel_for_dispatch_key("infinidepth::bilinear_gather", "CUDA")


def cpu_supports_bf16() -> bool:
    """Whether the ``cpp`` kernels can compute in bf16 here: this CPU has AVX512_BF16 (Intel Cooper
    Lake and Sapphire Rapids, AMD Zen 4 and later). Without it bf16 would be slower than fp32."""
    return HAS_EXTENSION and bool(torch.ops.infinidepth.cpu_supports_bf16())


def has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


def available_backends(device: torch.device | str) -> list[str]:
    """Backends that can run on ``device`` in this installation, reference first."""
    device = torch.device(device)
    out = ["torch"]
    if device.type == "cpu" and HAS_EXTENSION:
        out.append("cpp")
    if device.type == "cuda" and has_cuda_kernels():
        out.append("cuda")
    if has_triton() and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"):
        out.append("triton")
    return out


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """Turn ``auto`` into a concrete backend and reject one that cannot run here, by name."""
    device = torch.device(device)
    if backend == "auto":
        if device.type == "cuda" and has_cuda_kernels():
            return "cuda"
        if device.type == "cpu" and HAS_EXTENSION:
            return "cpp"
        return "torch"
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {('auto',) + BACKENDS}")
    if backend not in available_backends(device):
        raise RuntimeError(
            f"backend {backend!r} is not available for {device.type} tensors here "
            f"(available: {available_backends(device)})"
        )
    return backend


def as_int(value, what: str) -> int:
    """``value`` as a Python int (NumPy and 0-d tensor integers too); a bool or a float is an error."""
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {value!r}") from None


def require(ok: torch.Tensor, message) -> None:
    """``ValueError(message)`` unless the boolean tensor ``ok`` holds; ``message`` may be a callable
    (formatted only on failure, so it can read values). Under ``torch.compile`` and ``torch.export``
    a value is unknown while tracing, so the check goes into the graph instead
    (``torch._assert_async``: the compiled or exported program raises a RuntimeError with the
    message when it runs on such an input). The flag is copied to the CPU first, as eager mode reads
    it there too: on a GPU the assert would be a device-side one, which kills the CUDA context."""
    if torch.compiler.is_compiling():
        torch._assert_async(ok.cpu(), message if isinstance(message, str) else message(None))
    elif not bool(ok):
        raise ValueError(message if isinstance(message, str) else message(True))


def check_coords(coords: torch.Tensor, batch: int | None = None, limit: float | None = None) -> None:
    """Clear errors for query coordinates instead of garbage from a kernel; with ``limit``, also
    for coordinates beyond +-limit (one device sync, two with ``limit``; in a traced graph, asserts).
    Shape, batch and dtype are checked before values, so an empty query set passes."""
    if not isinstance(coords, torch.Tensor):
        raise TypeError(f"coords must be a tensor, got {type(coords).__name__}")
    if coords.dim() != 3 or coords.shape[-1] != 2:
        raise ValueError(f"coords must have shape [B, N, 2] holding normalised (y, x), got {tuple(coords.shape)}")
    if batch is not None and coords.shape[0] != batch:
        raise ValueError(f"coords batch {coords.shape[0]} does not match the features' batch {batch}")
    if not coords.is_floating_point():
        raise TypeError(f"coords must be floating point, got {coords.dtype}")
    if coords.numel() == 0:
        return
    largest = coords.abs().amax()  # NaN and inf propagate; several times faster than isfinite(coords).all()
    require(torch.isfinite(largest), "coords contain NaN or infinite values")
    if limit is None:
        return

    def too_far(eager):
        value = f" of magnitude {float(largest):.4g}," if eager else ""
        # not f"{limit:g}": traced by torch.compile(dynamic=True) the float is symbolic, and dynamo
        # formats it only without a format spec
        bound = f"{limit}".removesuffix(".0")
        return (f"coords must be normalised (y, x), the image spanning [-1, 1] edge to edge; got a value{value} "
                f"more than {bound} (pixel coordinates? infinidepth.ops.coords.pixel_to_normalized converts them)")

    require(largest <= limit, too_far)


def check_feature_map(feat: torch.Tensor, name: str = "feat") -> None:
    """A float map ``[B, C, H, W]`` with at least one cell (the kernels index cell 0)."""
    if not isinstance(feat, torch.Tensor) or feat.dim() != 4:
        raise ValueError(f"{name} must be a tensor [B, C, H, W], got {tuple(getattr(feat, 'shape', ())) or type(feat).__name__}")
    if not feat.is_floating_point():
        raise TypeError(f"{name} must be a float tensor, got {feat.dtype}")
    if feat.shape[-2] == 0 or feat.shape[-1] == 0:
        raise ValueError(f"{name} has no cells: shape {tuple(feat.shape)}")


def bilinear_gather_reference(feat: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """The oracle: grid_sample with our convention, returned as ``[B, N, C]`` in ``feat``'s dtype.
    16-bit maps are read in float32: torch's CPU grid_sample in float16 / bfloat16 returns NaN and
    wrong values (maps of 200 or 256 cells), and a 16-bit grid would move the queries (bf16 steps of
    2**-8 near 1 are 2 pixels of a 1024-wide map)."""
    dtype = torch.promote_types(feat.dtype, torch.float32)
    # Beyond +-3 every tap lies outside any map (zero padding); clamped there the answer is the
    # same, and grid_sample's arithmetic cannot overflow on coordinates near the float maximum.
    grid = coords.clamp(-3.0, 3.0).flip(-1).unsqueeze(1).to(dtype)  # [B, 1, N, 2] in (x, y)
    out = F.grid_sample(feat.to(dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[:, :, 0].transpose(1, 2).to(feat.dtype)


def bilinear_gather(feat: torch.Tensor, coords: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Bilinear samples of ``feat`` ``[B, C, H, W]`` at ``coords`` ``[B, N, 2]`` (y, x) -> ``[B, N, C]``.
    The kernel backends compute in float32, ``torch`` in ``feat``'s dtype or float32 if that is
    narrower; all return ``feat``'s dtype."""
    check_feature_map(feat)
    check_coords(coords, feat.shape[0])
    backend = resolve_backend(backend, feat.device)
    if backend == "torch":
        return bilinear_gather_reference(feat, coords)
    dtype = feat.dtype
    feat32, coords32 = feat.float(), coords.float()
    if backend == "triton":
        if torch.is_grad_enabled() and (feat32.requires_grad or coords32.requires_grad):
            out = _TritonGather.apply(feat32, coords32)  # the launch itself is invisible to autograd
        else:
            from infinidepth.kernels.bilinear_gather import bilinear_gather_triton

            out = bilinear_gather_triton(feat32, coords32)
    else:
        out = torch.ops.infinidepth.bilinear_gather(feat32, coords32)  # differentiable: see below
    return out.to(dtype)


def gather_backward(feat: torch.Tensor, coords: torch.Tensor, grad: torch.Tensor, need_feat: bool, need_coords: bool):
    """The gradients of :func:`bilinear_gather_reference` (``grid_sample``'s own backward) with
    respect to ``feat`` and ``coords`` given the output's ``grad`` ``[B, N, C]``: the backward of
    every kernel backend, which compute the same function. None for an input not asked for."""
    grid = coords.clamp(-3.0, 3.0).flip(-1).unsqueeze(1).to(feat.dtype)
    grad_feat, grad_grid = torch.ops.aten.grid_sampler_2d_backward(
        grad.to(feat.dtype).transpose(1, 2).unsqueeze(2), feat, grid, 0, 0, False, [need_feat, need_coords])
    grad_coords = None
    if need_coords:  # flat beyond the clamp, where every tap is outside the map anyway
        grad_coords = (grad_grid[:, 0].flip(-1) * (coords.abs() <= 3.0)).to(coords.dtype)
    return (grad_feat if need_feat else None), grad_coords


class _TritonGather(torch.autograd.Function):
    """The Triton gather with the reference's backward."""

    @staticmethod
    def forward(ctx, feat, coords):
        from infinidepth.kernels.bilinear_gather import bilinear_gather_triton

        ctx.save_for_backward(feat, coords)
        return bilinear_gather_triton(feat, coords)

    @staticmethod
    def backward(ctx, grad):
        feat, coords = ctx.saved_tensors
        return gather_backward(feat, coords, grad, *ctx.needs_input_grad[:2])


if HAS_EXTENSION:

    @torch.library.register_fake("infinidepth::bilinear_gather")
    def _bilinear_gather_fake(feat, coords):
        return feat.new_empty((feat.shape[0], coords.shape[1], feat.shape[1]))

    def _bilinear_gather_setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def _bilinear_gather_backward(ctx, grad):
        feat, coords = ctx.saved_tensors
        return gather_backward(feat, coords, grad, *ctx.needs_input_grad[:2])

    # Without it autograd passes through the kernel with a warning and no gradient at all (None
    # for the map and the coordinates): training through backend "auto" on the CPU learnt nothing.
    torch.library.register_autograd("infinidepth::bilinear_gather", _bilinear_gather_backward,
                                    setup_context=_bilinear_gather_setup)

    @torch.library.register_fake("infinidepth::fused_decode")
    def _fused_decode_fake(coords, maps, map_layer, weights, biases, acts, precision="fp32"):
        return coords.new_empty((coords.shape[0], coords.shape[1]))

    @torch.library.register_fake("infinidepth::fused_decode_with_grad")
    def _fused_decode_with_grad_fake(coords, maps, map_layer, weights, biases, acts, precision="fp32"):
        return coords.new_empty((coords.shape[0], coords.shape[1], 3))
