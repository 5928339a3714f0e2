"""Image metrics for novel views: PSNR, SSIM, LPIPS, and the hole fraction of a splatted render."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F


def _check_mask(mask: torch.Tensor | None, size, empty_ok: bool = False) -> None:
    """``mask``: None, or a bool ``[H, W]`` (an integer mask would index rows) selecting at least one
    pixel unless ``empty_ok`` (an average over no pixels is NaN)."""
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor [H, W], got {getattr(mask, 'dtype', type(mask).__name__)}")
    if mask.shape != tuple(size):
        raise ValueError(f"mask must be [H, W] = {tuple(size)}, got {tuple(mask.shape)}")
    if not empty_ok and not mask.any():
        raise ValueError("mask selects no pixels")


def _check(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None, values: bool = True, empty_ok: bool = False):
    """Images ``[H, W, 3]`` of one shape, not empty, and ``mask`` as :func:`_check_mask`; with ``values``
    also floating point, finite and in [0, 1] (the range PSNR and SSIM assume)."""
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        raise ValueError(f"images must be tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.shape != b.shape or a.dim() != 3 or a.shape[-1] != 3:
        raise ValueError(f"images must both be [H, W, 3], got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.numel() == 0:
        raise ValueError(f"images are empty: {tuple(a.shape)}")
    if values:
        for name, t in (("first", a), ("second", b)):
            if not t.is_floating_point():
                raise ValueError(f"the {name} image must be floating point in [0, 1], got {t.dtype} (divide 8-bit images by 255)")
            if not torch.isfinite(t).all():
                raise ValueError(f"the {name} image has NaN or infinite values")
            if t.min() < 0 or t.max() > 1:
                raise ValueError(f"the {name} image must be in [0, 1], got values in "
                                 f"[{float(t.min()):.4g}, {float(t.max()):.4g}]")
    _check_mask(mask, a.shape[:2], empty_ok)


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Peak signal-to-noise ratio (dB) of images in [0, 1], over ``mask`` (bool ``[H, W]``) when given."""
    _check(a, b, mask)
    err = (a.double() - b.double()) ** 2
    mse = err[mask].mean() if mask is not None else err.mean()
    return math.inf if mse == 0 else float(-10 * torch.log10(mse))


def ssim(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Structural similarity (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03,
    data range 1) of images in [0, 1] of at least 11x11 pixels, averaged over channels and over
    ``mask`` (bool ``[H, W]``) when given. The window is reflected at the borders and every pixel
    counts (scikit-image instead averages only pixels 5 or more from the border, the 3DGS code
    zero-pads): values near the borders, so small-image scores, differ slightly between them."""
    _check(a, b, mask)
    s = ssim_map(a.double(), b.double())
    return float(s[mask].mean() if mask is not None else s.mean())


def ssim_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM ``[H, W]`` of ``[H, W, 3]`` images, at least 11x11 (the window), differentiable (a training loss)."""
    _check(a, b, None, values=False)
    if min(a.shape[0], a.shape[1]) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 pixels (its window), got {a.shape[0]}x{a.shape[1]}")
    x, y = (t.permute(2, 0, 1)[:, None] for t in (a, b))                   # [3, 1, H, W]
    r = torch.arange(11, dtype=x.dtype, device=x.device) - 5
    k = torch.exp(-0.5 * (r / 1.5) ** 2)
    k = k / k.sum()
    w = (k[:, None] * k[None, :])[None, None]

    def blur(t):
        return F.conv2d(F.pad(t, (5, 5, 5, 5), mode="reflect"), w)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s[:, 0].mean(0)


def hole_fraction(alpha: torch.Tensor, mask: torch.Tensor | None = None, threshold: float = 0.5) -> float:
    """Fraction of (masked) pixels the splats leave uncovered: accumulated opacity ``alpha [H, W]`` (in
    [0, 1]) below ``threshold``; ``mask`` bool ``[H, W]``."""
    if not isinstance(alpha, torch.Tensor) or alpha.dim() != 2 or alpha.numel() == 0:
        raise ValueError(f"alpha must be a non-empty [H, W] tensor, got {tuple(getattr(alpha, 'shape', ()))}")
    if not alpha.is_floating_point() or not torch.isfinite(alpha).all() or alpha.min() < 0 or alpha.max() > 1:
        raise ValueError("alpha must be floating point, finite and in [0, 1]")
    if not 0 < threshold <= 1:  # (a NaN one used to find no holes anywhere)
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    _check_mask(mask, alpha.shape)
    holes = alpha < threshold
    return float(holes[mask].float().mean() if mask is not None else holes.float().mean())


def load_lpips(path, device="cpu") -> torch.nn.Module:
    """LPIPS (Zhang et al. 2018) through the ``lpips`` package, its network weights from ``path``:
    torchvision's VGG16 or AlexNet weights (``vgg16-397923af.pth``, ``alexnet-owt-7be5be79.pth``: the
    trunk; the calibrated linear layers are the package's, v0.1), or a whole ``lpips.LPIPS``
    state dict saved with ``torch.save``. Frozen, in eval mode; gradients flow to its inputs.
    Nothing is downloaded."""
    try:
        import lpips
    except ImportError as e:
        raise ImportError("LPIPS needs the lpips package: pip install lpips (or pip install -e '.[lpips]')") from e
    from infinidepth.checkpoint import CheckpointError, load_state_dict_strict, read_torch_weights

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no LPIPS weights file {path}")
    sd = read_torch_weights(path)
    whole = any(k.startswith("lin0.") for k in sd)  # a saved lpips.LPIPS, else a torchvision trunk
    first = sd.get("net.slice1.0.weight" if whole else "features.0.weight")
    kernel = first.shape[-1] if first is not None and first.dim() == 4 else None
    if kernel == 11:
        net = "alex"
    elif kernel == 3 and any(k.endswith(".28.weight") for k in sd):
        net = "vgg"
    else:
        raise CheckpointError(f"{path}: neither torchvision VGG16 / AlexNet weights (features.*) nor an lpips.LPIPS "
                              "state dict of those trunks (net.slice*, lin*)")
    with warnings.catch_warnings():  # torchvision's notice about lpips's old-style `pretrained` argument
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, pretrained=not whole, pnet_rand=True, verbose=False)
    if not whole:  # the package's linear layers and input scaling, the file's trunk (keys by torchvision's index)
        trunk = {}
        for key in model.state_dict():
            m = re.fullmatch(r"net\.slice\d+\.(\d+)\.(weight|bias)", key)
            if m:
                trunk[key] = sd.get(f"features.{m.group(1)}.{m.group(2)}")
        missing = sorted(k for k, v in trunk.items() if v is None)
        if missing:
            raise CheckpointError(f"{path}: lacks {len(missing)} tensors of the {net} trunk (e.g. {missing[0]})")
        sd = {**model.state_dict(), **trunk}
    load_state_dict_strict(model, sd, source=f"LPIPS weights {path}")
    return model.eval().requires_grad_(False).to(device)


def lpips_distance(model: torch.nn.Module, a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """LPIPS between ``[H, W, 3]`` images in [0, 1] (a 0-dim tensor, differentiable in ``a``). Pixels
    outside ``mask`` are taken from ``b`` in both, so they add no difference of their own."""
    _check(a, b, mask, values=False, empty_ok=True)      # (a render being trained may stray outside [0, 1])
    if mask is not None:
        a = torch.where(mask[..., None], a, b)
    x, y = (t.permute(2, 0, 1)[None].float() for t in (a, b))
    return model(x, y, normalize=True).reshape(())
