"""Reproduce the bundled demonstration model and its comparison with a grid baseline.

    python benchmarks/demo_model.py --work data/demo --steps 2500 \
        --json benchmarks/results/demo_model.json --bundle infinidepth/assets/demo_model.safetensors

1. renders procedural training scenes (ground truth 384x512, four times the network input) and
   held-out ones (other seeds);
2. trains the `tiny` paper-architecture model (implicit decoder) with sparse sub-pixel supervision
   at a 96x128 network input (`--input`), and the same encoder with a grid head (`grid-tiny`: depth on the
   input's pixel grid, bilinearly upsampled) with the same data, steps and schedule;
3. evaluates both on the held-out scenes at 4x the training resolution (384x512, the ground truth's
   own resolution): AbsRel and delta < 1.25 on the full image and on high-frequency pixels; and,
   to show whether the implicit head uses what lies between input pixels, the implicit model's
   own input-grid prediction upsampled bilinearly and the ceiling of any grid head
   (`grid_ceiling.py`: the ground truth on the input grid, upsampled);
4. writes the report (with the training curves, summarised) and, beside it, a picture of three
   held-out scenes (input, ground truth, each model), and copies the implicit model's weights to
   `--bundle` (the demo default).

Each stage resumes: rendered scenes, finished runs (`model.safetensors`) and interrupted runs
(`checkpoint.pt`) are reused.

`--encoder-from MODEL.safetensors` compares the heads alone: both models start from that model's
ViT encoder and keep it frozen (`lr_encoder` 0), so only the reassembly and the head are trained and
the two differ in nothing else.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import device_name, score_line, write_report  # noqa: E402
from grid_ceiling import ceiling_scores  # noqa: E402

from infinidepth.checkpoint import load_model  # noqa: E402
from infinidepth.data.procedural import render_set  # noqa: E402
from infinidepth.eval import Procedural, evaluate  # noqa: E402
from infinidepth.eval.evaluate import predict_depth  # noqa: E402
from infinidepth.eval.metrics import align, clip_depth  # noqa: E402
from infinidepth.io import colorize_depth, write_png  # noqa: E402
from infinidepth.models import PRESETS  # noqa: E402
from infinidepth.train import TrainConfig, train  # noqa: E402
from infinidepth.train.config import DataSource  # noqa: E402

INPUT = (96, 128)   # the network input by default; the ground truth and the evaluation are at 4x
FIGURE_SCENES = (0, 7, 12)   # held-out scenes in the picture: a street, a street with a tree and posts, a room


def variant(preset: str, patch: int, head: tuple[int, ...] | None, encoder: tuple[int, int, int] | None = None) -> str:
    """``preset``, or a variant of it registered as ``<preset>[-e<embed>x<depth>x<heads>][-p<patch>][-h<head>]``:
    another ViT width, depth and head count, another ViT patch size (tiny-p4: at a 96x128 input its
    pyramid has strides 1, 2, 4 pixels) and, for the implicit model, other hidden widths of the
    decoder's head MLP."""
    arch, config = PRESETS[preset]
    name = preset
    if encoder and encoder != (config.vit.embed_dim, config.vit.depth, config.vit.num_heads):
        name += "-e" + "x".join(map(str, encoder))
        embed, depth, heads = encoder
        config = dataclasses.replace(config, vit=dataclasses.replace(config.vit, embed_dim=embed, depth=depth, num_heads=heads))
    if patch != config.vit.patch_size:
        name += f"-p{patch}"
        config = dataclasses.replace(config, vit=dataclasses.replace(config.vit, patch_size=patch))
    if head and isinstance(config.head, tuple) and head != config.head:
        name += "-h" + "x".join(map(str, head))
        config = dataclasses.replace(config, head=head)
    if name != preset:
        PRESETS[name] = (arch, config)
    return name


def run(model: str, work: Path, steps: int, seed: int, lr_decoder: float = 1e-3, pairs: int = 4096,
        encoder_from: str | None = None, input_size: tuple[int, int] = INPUT) -> Path:
    out = work / f"run-{model}"
    if (out / "model.safetensors").is_file():
        return out / "model.safetensors"
    cfg = TrainConfig(model=model, data=[DataSource("procedural", str(work / "train"))], input_size=input_size, pairs=pairs,
                      target="log_depth", batch_size=8, steps=steps, lr_encoder=0.0 if encoder_from else 1e-3,
                      lr_decoder=lr_decoder, weight_decay=0.01, pretrained_encoder=encoder_from,
                      warmup_steps=100, checkpoint_every=250, log_every=25, num_workers=1, seed=seed, out=str(out))
    train(cfg, resume=(out / "checkpoint.pt").is_file())
    return out / "model.safetensors"


def curve(run_dir: Path, points: int = 10) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line]
    # mean loss over windows, so the summary shows the trend, not single noisy steps
    size = max(1, len(rows) // points)
    return [{"step": rows[min(i + size, len(rows)) - 1]["step"],
             "mean_loss": sum(r["loss"] for r in rows[i:i + size]) / len(rows[i:i + size])}
            for i in range(0, len(rows), size)]


def paired(per_image: dict, a: str, b: str, resamples: int = 10_000, seed: int = 0) -> dict:
    """Model ``a`` minus model ``b`` on the same held-out images, per metric and region: the mean
    difference, a 95% paired-bootstrap interval of it (images resampled) and on how many images
    ``a`` is better. One training seed per model: this says how much the held-out set can vary
    the verdict, not how much retraining could."""
    rng = np.random.default_rng(seed)
    of_b = {row["name"]: row for row in per_image[b]}
    both = [(x, of_b[x["name"]]) for x in per_image[a] if x["name"] in of_b]
    out = {}
    for region in ("full", "hf"):
        for metric, lower_is_better in (("abs_rel", True), ("delta_1.25", False)):
            d = np.array([x[region][metric] - y[region][metric] for x, y in both
                          if x[region] is not None and y[region] is not None])
            if d.size == 0:
                continue
            means = d[rng.integers(0, len(d), (resamples, len(d)))].mean(1)
            lo, hi = np.percentile(means, [2.5, 97.5])
            better = int(np.sum(d < 0)) if lower_is_better else int(np.sum(d > 0))
            out[f"{region}/{metric}"] = {"mean_difference": float(d.mean()), "ci95": [float(lo), float(hi)],
                                         "images_better": better, "images": len(d)}
    return out


def comparison_figure(models: dict, val, path: Path, input_size: tuple[int, int]) -> None:
    """One row per scene: the input, the ground truth, then each model queried at the ground truth's
    resolution, aligned to it as the scores are (RANSAC in the model's space) and coloured on the
    ground truth's scale, so that colours compare across a row. Black: no ground truth (sky)."""
    from PIL import Image, ImageDraw

    rows = []
    for i in [i for i in FIGURE_SCENES if i < len(val)]:
        f = val.frame(i)
        gt, valid = f["depth"].numpy(), f["valid"].numpy()
        scale = gt[valid]
        tiles = [f["rgb"], np.where(valid[..., None], colorize_depth(gt, reference=scale), 0).astype(np.uint8)]
        for model in models.values():
            pred = predict_depth(model, f["rgb"], gt.shape, "native", input_size)
            pred, _, _ = align(pred, gt, valid, space=model.alignment, method="ransac")
            pred = clip_depth(pred, val.depth_range())  # align leaves non-finite values to the protocol's clip
            tiles.append(colorize_depth(pred, reference=scale))
        rows.append(np.concatenate(tiles, 1))
    picture = np.concatenate(rows, 0)
    header = Image.new("RGB", (picture.shape[1], 20), "white")
    draw = ImageDraw.Draw(header)
    names = [f"input (network sees {input_size[0]}x{input_size[1]})", "ground truth", *models]
    for k, name in enumerate(names):
        draw.text((k * picture.shape[1] // len(names) + 6, 4), name, fill="black")
    write_png(path, np.concatenate([np.asarray(header), picture], 0))
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="data/demo")
    ap.add_argument("--train-scenes", type=int, default=600)
    ap.add_argument("--val-scenes", type=int, default=60)
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr-decoder", type=float, default=1e-3, help="learning rate of everything but the ViT")
    ap.add_argument("--pairs", type=int, default=4096, help="coordinate-depth pairs per image")
    ap.add_argument("--models", default="tiny,grid-tiny", help="which runs to train/evaluate (e.g. one per process)")
    ap.add_argument("--encoder", help="ViT embedding width, depth and heads of both models, e.g. 192,6,3 (default: the preset's)")
    ap.add_argument("--patch", type=int, default=16, help="ViT patch size of both models (16: the presets as they are)")
    ap.add_argument("--head", help="hidden widths of the implicit decoder's head MLP, e.g. 64,64 (default: the preset's)")
    ap.add_argument("--input", default="96x128", help="network input HxW, multiples of 16; ground truth and evaluation at 4x")
    ap.add_argument("--encoder-from", help="a model file whose ViT encoder both models start from and keep frozen")
    ap.add_argument("--json")
    ap.add_argument("--bundle")
    args = ap.parse_args()
    encoder = tuple(int(v) for v in args.encoder.split(",")) if args.encoder else None
    if encoder is not None and len(encoder) != 3:
        ap.error(f"--encoder takes three numbers, embedding width, depth and heads (e.g. 192,6,3), got {args.encoder!r}")
    try:
        input_size = tuple(int(v) for v in args.input.lower().split("x"))
        if len(input_size) != 2 or min(input_size) <= 0 or input_size[0] % 16 or input_size[1] % 16:
            raise ValueError
    except ValueError:
        ap.error(f"--input takes HxW, positive multiples of 16 (e.g. 96x128), got {args.input!r}")
    if args.encoder_from and not Path(args.encoder_from).is_file():
        ap.error(f"--encoder-from: no model file {args.encoder_from}")
    gt = (4 * input_size[0], 4 * input_size[1])
    work = Path(args.work)
    render_set(work / "train", args.train_scenes, gt, seed=0)
    render_set(work / "val", args.val_scenes, gt, seed=100_000)
    head = tuple(int(v) for v in args.head.split(",")) if args.head else None
    names = [variant(name, args.patch, head, encoder) for name in args.models.split(",")]
    models = {name: run(name, work, args.steps, args.seed, args.lr_decoder, args.pairs, args.encoder_from, input_size) for name in names}
    val = Procedural(work / "val")
    rows, loaded, per_image = {}, {}, {}
    for name, path in models.items():
        model = loaded[name] = load_model(path)
        result = evaluate(model, val, output_resolution="native", input_size=input_size, progress=True)
        rows[name] = {"summary": result["summary"], "curve": curve(path.parent)}
        per_image[name] = result["images"]
        s = result["summary"]
        print(f"{name:>10}: {score_line(s)}")
    implicit = next((n for n in names if PRESETS[n][0] == "InfiniDepthPaper"), None)
    grid = next((n for n in names if PRESETS[n][0] == "GridBaseline"), None)
    # Does the implicit model use what lies between input pixels? Its own input-grid prediction,
    # upsampled like the grid baseline's, and what a perfect grid scores (benchmarks/grid_ceiling.py).
    ceiling = ceiling_scores(val, [input_size])[f"{input_size[0]}x{input_size[1]}"]
    scored = [("grid ceiling", ceiling)]
    if implicit:
        upsampled = evaluate(loaded[implicit], val, output_resolution="input", input_size=input_size, progress=False)
        rows[implicit]["summary_input_grid"] = upsampled["summary"]
        scored.append((f"{implicit} on its input grid, upsampled", upsampled["summary"]))
    for label, s in scored:
        print(f"{label}: {score_line(s)}")
    comparison = paired(per_image, implicit, grid) if implicit and grid else None
    for key, c in (comparison or {}).items():
        print(f"{implicit} - {grid}, {key}: {c['mean_difference']:+.4f} (95% over images {c['ci95'][0]:+.4f} .. "
              f"{c['ci95'][1]:+.4f}); better on {c['images_better']} of {c['images']} images")
    write_report(args.json, {
        "benchmark": "bundled demo model vs grid baseline", "device": device_name(torch.device("cuda" if torch.cuda.is_available() else "cpu")),   # where train() ran
        "input": list(input_size), "evaluated_at": list(gt), "train_scenes": args.train_scenes, "val_scenes": args.val_scenes,
        "steps": args.steps, "seed": args.seed, "lr_decoder": args.lr_decoder, "pairs": args.pairs, "encoder": args.encoder, "patch": args.patch, "head": args.head, "encoder_from": args.encoder_from, "alignment": "RANSAC scale and shift in the model's own space (log-depth for these models), per image",
        "models": rows, "implicit_minus_grid": comparison, "grid_ceiling": ceiling,
    })
    if args.json:
        comparison_figure(loaded, val, Path(args.json).with_suffix(".png"), input_size)
    if args.bundle and implicit:
        shutil.copyfile(models[implicit], args.bundle)
        print(f"bundled {models[implicit]} as {args.bundle}")


if __name__ == "__main__":
    main()
