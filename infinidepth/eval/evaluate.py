"""Run a model over a benchmark, align, score on the full image and on high-frequency regions.

Two ways to reach the ground truth's resolution (``output_resolution``):

- ``"native"``: the implicit decoder is queried directly at every ground-truth pixel centre;
- ``"input"``: the baseline: depth predicted at the network input's resolution, then upsampled
  bilinearly to the ground truth's, as a grid-based model would do.

Relative models (``model.alignment`` set) are aligned per image by scale and shift in the model's own
space (disparity, or log-depth: scale and power); metric models are scored as they are unless
an alignment is asked for. Every prediction, aligned or not, is then clipped to the benchmark's fixed
range (``dataset.depth_range()``; NaN counts as its maximum, logged with the count, ``nonfinite``
per image; so do the pixels the alignment leaves without a depth, ``lost_in_alignment``). Metrics are
averaged over images; an image with fewer than ``min_pixels`` scored pixels is skipped (a scale and
shift fit to a handful of pixels is exact and would weigh as much as a full image), and so is the
high-frequency row of an image with fewer than ``min_pixels`` high-frequency pixels. Every skip
(unpaired files, unreadable frames, too few pixels) is logged and listed in the result's ``skipped``.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

from infinidepth.data.datasets import DataError

from .hf_mask import DEFAULT_POINTS, high_frequency_mask
from .metrics import METRICS, align, clip_depth, depth_metrics

log = logging.getLogger("infinidepth.eval")

MIN_PIXELS = 100   # fewest scored pixels for an image's row (and its high-frequency row) to count


@torch.no_grad()
def predict_depth(model, rgb: np.ndarray, out_size: tuple[int, int], output_resolution: str,
                  input_size: tuple[int, int] | None = None) -> np.ndarray:
    """Depth ``[H, W]`` float32 at ``out_size`` for an RGB ``uint8 [h, w, 3]`` image."""
    H0, W0 = rgb.shape[:2]
    from infinidepth.cli import default_input_size

    size = input_size or default_input_size(H0, W0, getattr(model, "input_size", None), model.patch_size)
    image = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].float().div(255)   # a writable copy
    image = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    image = image.to(model.device)
    if output_resolution == "native":
        depth = model.predict(image, output_size=out_size)
    elif output_resolution == "input":
        depth = F.interpolate(model.predict(image), size=out_size, mode="bilinear", align_corners=False)
    else:
        raise ValueError(f"output_resolution must be 'native' or 'input', got {output_resolution!r}")
    return depth[0, 0].float().cpu().numpy()


def evaluate(model, dataset, output_resolution: str = "native", input_size=None, align_method: str | None = "auto",
             align_space: str | None = None, hf_points: int = DEFAULT_POINTS, seed: int = 0, limit: int | None = None,
             progress: bool = True, min_pixels: int = MIN_PIXELS) -> dict:
    """Scores of ``model`` on ``dataset`` (an ``infinidepth.eval.benchmarks`` reader): per region
    (``full``, ``hf``) the mean of every metric over images, and per image the same."""
    from tqdm import tqdm

    if align_method == "auto":
        align_method = "ransac" if model.alignment is not None else None
    if align_method not in (None, "lsq", "ransac"):
        raise ValueError(f"alignment must be 'lsq', 'ransac', 'auto' or None, got {align_method!r}")
    if min_pixels < 2:
        raise ValueError(f"min_pixels must be at least 2, got {min_pixels}")
    space = align_space or (model.alignment if model.alignment in ("disparity", "log_depth") else "depth")
    depth_range = dataset.depth_range()
    n = len(dataset) if limit is None else min(limit, len(dataset))
    per_image, skipped = [], list(dataset.unpaired)   # unpaired files were logged when the set was listed
    for i in tqdm(range(n), desc=f"evaluating {type(dataset).__name__}", unit="image", disable=not progress):
        try:
            f = dataset.frame(i)
        except DataError as e:
            _skip(skipped, str(e))
            continue
        name = f["name"]
        gt = f["depth"].numpy()
        mask = f["valid"].numpy()
        region = dataset.region(gt.shape)
        if region is not None:
            mask &= region
        scored = int(mask.sum())
        if scored < min_pixels:
            _skip(skipped, f"{name}: {scored} scored pixels, fewer than the minimum {min_pixels}")
            continue
        raw = predict_depth(model, f["rgb"], gt.shape, output_resolution, input_size)
        pred, a, b = raw, None, None
        if align_method is not None:
            try:
                pred, a, b = align(raw, gt, mask, space=space, method=align_method, seed=seed)
                if not a > 0:  # scored as fitted (it is the model's answer), but it is worth a look
                    log.warning("%s: the alignment's scale is %.3g <= 0 in %s space: the prediction orders the "
                                "scene the other way round from the ground truth", name, a, space)
            except ValueError as e:   # under 2 finite, positive predicted values on the scored pixels
                log.warning("%s: cannot align the prediction (%s); every pixel is scored as %g m",
                            name, e, depth_range[1])
                pred = np.full(gt.shape, np.nan, np.float32)
        nonfinite = int((~np.isfinite(raw[mask])).sum())
        if nonfinite:
            log.warning("%s: the prediction is NaN or infinite on %d of %d scored pixels; scored as %g m (NaN, +inf) "
                        "or %g m (-inf)", name, nonfinite, scored, depth_range[1], depth_range[0])
        lost = 0
        if a is not None:   # a depth <= 0 has no disparity or log; an aligned disparity <= 0 is beyond infinity
            lost = int((np.isfinite(raw) & ~np.isfinite(pred))[mask].sum())
            if lost:
                log.warning("%s: %d of %d scored pixels have no depth after the alignment (a predicted depth <= 0, or an "
                            "aligned disparity <= 0); scored as %g m", name, lost, scored, depth_range[1])
        pred = clip_depth(pred, depth_range)
        hf = mask & _hf_mask(dataset, i, gt, mask, hf_points, seed)
        n_hf = int(hf.sum())
        row = {"name": name, "full": _score(pred, gt, mask, name), "hf": None, "nonfinite": nonfinite,
               "lost_in_alignment": lost}
        if n_hf >= min_pixels:
            row["hf"] = _score(pred, gt, hf, name)
        else:
            _skip(skipped, f"{name}: high-frequency row: {n_hf} pixels, fewer than the minimum {min_pixels}")
        if a is not None:
            row["alignment"] = {"space": space, "method": align_method, "a": a, "b": b}
        per_image.append(row)
    if not per_image:
        raise DataError(f"no image of {type(dataset).__name__} could be evaluated ({len(skipped)} skipped)")
    summary = {}
    for region in ("full", "hf"):
        rows = [r[region] for r in per_image if r[region] is not None]
        summary[region] = {m: float(np.mean([r[m] for r in rows])) for m in METRICS} if rows else None
        if rows:
            summary[region]["images"] = len(rows)
    return {"dataset": type(dataset).__name__, "output_resolution": output_resolution,
            "alignment": None if align_method is None else {"method": align_method, "space": space},
            "depth_range": list(depth_range), "min_pixels": min_pixels, "hf_points": hf_points,
            "summary": summary, "images": per_image, "skipped": skipped}


def _skip(skipped: list, message: str) -> None:
    log.warning("skipping %s", message)
    skipped.append(message)


def _score(pred, gt, mask, name) -> dict:
    try:
        return depth_metrics(pred, gt, mask)
    except ValueError as e:  # cannot happen after clip_depth; named rather than a traceback if it does
        raise DataError(f"{name}: {e}") from e


def _read_mask(path) -> np.ndarray:
    """A released mask PNG as booleans: any non-zero value (of any colour channel, at any bit depth)
    is in; an alpha channel is not part of the mask (an opaque grey-and-alpha file would be all in)."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode == "P":
            im = im.convert("RGB")
        bands = im.getbands()
        m = np.asarray(im)
    if m.ndim == 3:
        m = m[..., [i for i, band in enumerate(bands) if band != "A"]]
    return (m != 0).any(axis=-1) if m.ndim == 3 else m != 0


def _hf_mask(dataset, i, gt, mask, n, seed) -> np.ndarray:
    path = dataset.hf_mask_file(dataset.records[i])
    if path is not None:
        try:
            m = _read_mask(path)
        except Exception as e:  # a truncated or foreign file: PIL raises its own types
            log.warning("cannot read the released mask %s (%s: %s): computing the mask instead",
                        path, type(e).__name__, e)
        else:
            if m.shape == gt.shape:
                return m
            log.warning("%s is %s, its depth %s: computing the mask instead", path, m.shape, gt.shape)
    return high_frequency_mask(gt, mask, n=n, seed=seed)


COLUMNS = [("abs_rel", "AbsRel"), ("sq_rel", "SqRel"), ("rmse", "RMSE"), ("rmse_log", "RMSElog"),
           ("delta_1.25^0.5", "d<1.25^.5"), ("delta_1.25", "d<1.25"), ("delta_1.25^2", "d<1.25^2"),
           ("delta_1.01", "d<1.01"), ("delta_1.02", "d<1.02"), ("delta_1.04", "d<1.04")]


def format_table(result: dict) -> str:
    """A plain-text table: one row per region (full image, high-frequency pixels)."""
    head = f"{result['dataset']} ({result['output_resolution']} resolution"
    head += f", {result['alignment']['method']} alignment in {result['alignment']['space']} space)" if result["alignment"] else ", no alignment)"
    lines = [head, f"{'region':<8}{'images':>7}" + "".join(f"{label:>11}" for _, label in COLUMNS)]
    for region, label in (("full", "full"), ("hf", "HF")):
        s = result["summary"][region]
        if s is None:
            lines.append(f"{label:<8}{0:>7}" + "".join(f"{'-':>11}" for _ in COLUMNS))
            continue
        lines.append(f"{label:<8}{s['images']:>7}" + "".join(f"{_fmt(s[k]):>11}" for k, _ in COLUMNS))
    if result["skipped"]:
        lines.append(f"skipped {len(result['skipped'])} (unpaired files, unreadable frames, images or high-frequency "
                     "rows with too few pixels); see the log")
    return "\n".join(lines)


def _fmt(v: float) -> str:
    return "nan" if not math.isfinite(v) else f"{v:.4f}"
