"""Training the paper's Gaussian head on multi-view procedural scenes, the depth model frozen.

Per step: a procedural scene (seeded), its source view and ``views - 1`` moved views rendered exactly;
the frozen depth model samples ``points`` with the surface-area sampler on the source image; their
relative depth is aligned to the source view's true depth (RANSAC in log-depth, as evaluation does,
so the points live in the scene's metric frame); the head turns points, colours, Plücker rays and
the encoder features sampled at the points into Gaussians; those are rendered (the differentiable
PyTorch rasteriser) into every view and compared with the true images on their valid pixels:
``L1 + ssim_weight * (1 - SSIM)``; plus ``coverage_weight * (1 - opacity)`` over the source view's
surface pixels, all of which the points see (without it the head learnt to leave surfaces half
transparent, specks when rendered finer); plus ``lpips_weight * LPIPS`` when ``lpips`` names its network
weights (torchvision's VGG16 or AlexNet file, or a saved ``lpips.LPIPS``; ``gs.metrics.load_lpips``,
the ``lpips`` package). They are not bundled, so by default there is no LPIPS term, and the command
says so when it starts.

``OUT/gs_checkpoint.pt`` (head, optimiser, step, RNG state, config) is written atomically every
``checkpoint_every`` steps, at the end and on SIGTERM/SIGINT; ``resume=True`` continues it.
``OUT/gs_head.pt`` is the final head for ``infinidepth gs --gs-head``.
"""

from __future__ import annotations

import dataclasses
import json
import random
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .heads import PixelAlignedHead, PointHead
from .metrics import load_lpips, lpips_distance, ssim_map
from .render import render_torch


@dataclass
class GSTrainConfig:
    depth_model: str = "demo"
    scenes: int = 200
    seed_offset: int = 0
    size: tuple[int, int] = (96, 128)
    views: int = 3
    baseline: float = 0.5
    points: int = 6000
    steps: int = 500
    lr: float = 1e-3
    hidden: int = 64
    ssim_weight: float = 0.2
    coverage_weight: float = 0.5  # times (1 - opacity) over the source view's surface pixels
    checkpoint_every: int = 100
    log_every: int = 10
    seed: int = 0
    out: str = "runs/gs"
    lpips: str | None = None  # LPIPS network weights (see load_lpips); None: no LPIPS term
    lpips_weight: float = 0.05  # as pixelSplat and MVSplat weigh it against their photometric loss

    def __post_init__(self):
        if isinstance(self.size, list):
            self.size = tuple(self.size)

    def loss_description(self) -> str:
        lpips = f" + {self.lpips_weight:g} LPIPS ({self.lpips})" if self.lpips else \
            " (no LPIPS: --lpips VGG16_OR_ALEXNET_WEIGHTS.pth adds it)"
        return f"loss: L1 + {self.ssim_weight:g} (1 - SSIM) + {self.coverage_weight:g} (1 - source-view opacity){lpips}"

    def validate(self, label=lambda field: field) -> "GSTrainConfig":
        """Every field's type and range (the checks of infinidepth.train.config); one ValueError naming
        each bad field (as ``label(field)`` calls it: the command line's flags, say) and what it must be."""
        from infinidepth.train.config import check_int, check_number, check_size, check_text

        problems = []
        for k in ("steps", "checkpoint_every", "log_every", "hidden"):
            check_int(problems, label(k), getattr(self, k), 1)
        # scenes and views bounded as infinidepth data render's: every step draws from a permutation of
        # the scenes and renders all views of one
        check_int(problems, label("scenes"), self.scenes, 1, 10**6)
        check_int(problems, label("points"), self.points, 4, 2**26)           # as infinidepth gs --points
        if check_int(problems, label("views"), self.views, 2, why=" (a source and a moved view)") and self.views > 1000:
            problems.append(f"{label('views')} must be at most 1000, got {self.views}")
        check_int(problems, label("seed_offset"), self.seed_offset, 0)
        check_int(problems, label("seed"), self.seed, 0, 2**32 - 1)
        check_size(problems, label("size"), self.size, multiple=16)
        for k, positive in (("baseline", True), ("lr", True), ("ssim_weight", False), ("coverage_weight", False),
                            ("lpips_weight", False)):
            check_number(problems, label(k), getattr(self, k), 0, above=positive)
        check_text(problems, label("depth_model"), self.depth_model)
        check_text(problems, label("out"), self.out, what="a folder path")
        if self.lpips is not None and check_text(problems, label("lpips"), self.lpips, what="a weights file") \
                and not Path(self.lpips).is_file():
            problems.append(f"{label('lpips')}: no weights file {self.lpips}")
        if problems:
            raise ValueError("bad GS training config:\n  " + "\n  ".join(problems))
        return self


FREE_ON_RESUME = ("out", "log_every", "checkpoint_every")   # as infinidepth.train.trainer's
RESUME_KEYS = ("head", "optimizer", "step", "config", "rng")   # what save() writes


def feature_dim(depth_model) -> int:
    image = torch.zeros(1, 3, 32, 32, device=depth_model.device)
    return sum(m.shape[1] for m in depth_model.encode(image).maps)


def point_features(sp) -> torch.Tensor:
    """The point head's features ``[B, n, C]``: every map of the encoding ``sp`` read, sampled
    bilinearly at its points (``sp``: what ``model.sample_points`` returns)."""
    from infinidepth.ops.gather import bilinear_gather_reference

    return torch.cat([bilinear_gather_reference(m.float(), sp.coords) for m in sp.features.maps], -1)


def head_inputs(depth_model, image, K, n, seed, true_depth=None):
    """Points (camera frame), colours and sampled features of ``image`` ``[1, 3, H, W]``; with ``true_depth`` ``[H, W]`` the depth is first aligned to it
    (log-depth RANSAC)."""
    from infinidepth.align import fit_affine_robust
    from infinidepth.sampling import backproject

    H, W = image.shape[-2:]
    with torch.no_grad():
        sp = depth_model.sample_points(image, n, K, seed=seed)
        f = point_features(sp)[0]
    depth = sp.depth[0].cpu().double()
    coords = sp.coords[0].cpu()
    if true_depth is not None:
        i = ((coords[:, 0] + 1) / 2 * H).floor().long().clamp(0, H - 1)
        j = ((coords[:, 1] + 1) / 2 * W).floor().long().clamp(0, W - 1)
        t = true_depth[i, j].double()
        ok = (t > 0) & (depth > 0)
        if ok.sum() >= 2:
            a, b = fit_affine_robust(depth[ok].log().numpy(), t[ok].log().numpy(), seed=seed)
            depth = torch.exp(a * depth.clamp_min(1e-9).log() + b)
    points = backproject(depth.float()[None], coords[None], K.float()[None].cpu(), (H, W))[0]
    return points, sp.colors[0].cpu().float(), f.cpu()


def _scene_views(cfg: GSTrainConfig, step: int):
    from infinidepth.data.procedural import generate_scene, render

    order = np.random.default_rng(cfg.seed).permutation(cfg.scenes)
    seed = cfg.seed_offset + int(order[step % cfg.scenes])
    scene = generate_scene(seed, views=cfg.views, baseline=cfg.baseline)
    return scene, [render(scene, cfg.size, view=v) for v in range(cfg.views)]


def train_gs(cfg: GSTrainConfig, resume: bool = False, progress: bool = True, on_step=None) -> dict:
    from tqdm import tqdm

    from infinidepth.checkpoint import load_model
    from infinidepth.io import atomic_path
    from infinidepth.train.trainer import trim_log

    cfg.validate()
    out = Path(cfg.out)
    ckpt = out / "gs_checkpoint.pt"
    if ckpt.exists() and not resume:
        raise FileExistsError(f"{ckpt} exists: pass resume=True (--resume) or choose another out folder")
    if (out / "gs_head.pt").exists() and not resume:   # a finished run whose checkpoint was deleted
        raise FileExistsError(f"{out / 'gs_head.pt'} exists (a finished run's head): choose another out folder, "
                              "or move it away to train again here")
    if resume and ckpt.is_dir():
        raise ValueError(f"--resume: {ckpt} is a folder, not a checkpoint file; move it away")
    if resume and not ckpt.is_file():
        raise ValueError(f"--resume: no checkpoint at {ckpt} (nothing to continue: run without --resume to start)")
    torch.manual_seed(cfg.seed)
    depth_model = load_model(cfg.depth_model).eval()
    if depth_model.arch in ("InfiniDepth_DepthSensor", "GridBaseline"):
        raise ValueError(f"train-gs takes a monocular implicit depth model (its sampler needs the field's derivative "
                         f"and no sparse depth); {cfg.depth_model} is {depth_model.arch}")
    head = PointHead(feature_dim(depth_model), cfg.hidden)
    perceptual = load_lpips(cfg.lpips) if cfg.lpips else None
    out.mkdir(parents=True, exist_ok=True)  # once the inputs have loaded: a refused run leaves no empty folder
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=0.0)
    step = 0
    if resume:
        from infinidepth.checkpoint import CheckpointError, load_training_state, one_line

        try:
            state = load_training_state(ckpt)   # runs no code named by the file
        except CheckpointError as e:  # truncated, overwritten or foreign: the error names the file and says which
            raise ValueError(f"--resume: {e}; it is damaged or not a train-gs checkpoint: restore a copy, or delete "
                             "it to start the run over") from None
        missing = [k for k in RESUME_KEYS if k not in state] if isinstance(state, dict) else list(RESUME_KEYS)
        lacking = ValueError(f"--resume: {ckpt} is damaged or not a train-gs checkpoint (it lacks {', '.join(missing)})")
        if "config" in missing:
            raise lacking
        saved = state["config"]
        # where the run folder is and how often it logs and saves change nothing the run computes: a
        # resume may change them (a folder moved, or spelt "runs/gs/" instead of "runs/gs")
        saved = {k: v for k, v in saved.items() if k not in FREE_ON_RESUME} if isinstance(saved, dict) else {}
        now = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in FREE_ON_RESUME}
        if saved != now:
            changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
            raise ValueError(f"--resume: the config differs from the checkpoint's in {', '.join(changed)}")
        if missing:  # (after the config: a run's config that differs is the likelier news)
            raise lacking
        try:
            head.load_state_dict(state["head"])
            opt.load_state_dict(state["optimizer"])
            step = int(state["step"])
            torch.set_rng_state(state["rng"]["torch"])
            random.setstate(state["rng"]["python"])
        except (RuntimeError, KeyError, TypeError, ValueError) as e:   # the head's shapes come from the depth model's features
            raise ValueError(f"--resume: {ckpt} does not fit this run (was the depth model {cfg.depth_model} replaced "
                             f"since?): {one_line(e)}") from None
    trim_log(out / "gs_log.jsonl", step)   # lines past the checkpoint (a killed run's) are logged again

    def save(path=ckpt):
        state = {"head": head.state_dict(), "optimizer": opt.state_dict(), "step": step, "config": dataclasses.asdict(cfg),
                 "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}}
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    stop = {"signal": None}
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, lambda s, f: stop.update(signal=s))
        except ValueError:
            pass
    losses = []
    bar = tqdm(total=cfg.steps, initial=step, desc="training the GS head", unit="step", disable=not progress)
    try:
        while step < cfg.steps and stop["signal"] is None:
            scene, views = _scene_views(cfg, step)
            K = views[0].intrinsics.float()
            image = views[0].rgb.permute(2, 0, 1)[None].to(depth_model.device)
            points, colors, feats = head_inputs(depth_model, image, K.to(depth_model.device), cfg.points,
                                                   cfg.seed + step, views[0].depth)
            g = head(points, colors, feats)
            loss = 0.0
            for v in range(1, cfg.views):
                w2c = torch.from_numpy(np.linalg.inv(scene.cameras[v]) @ scene.cameras[0]).float()
                pred = render_torch(g, w2c, K, cfg.size)["rgb"]
                truth, mask = views[v].rgb, views[v].valid
                l1 = (pred - truth).abs().mean(-1)[mask].mean()
                loss = loss + l1 + cfg.ssim_weight * (1 - ssim_map(pred, truth)[mask].mean())
                if perceptual is not None:
                    loss = loss + cfg.lpips_weight * lpips_distance(perceptual, pred, truth, mask)
            loss = loss / (cfg.views - 1)
            # every surface pixel of the source view is seen by the points: where the Gaussians leave it
            # half transparent the background shows through, as specks once rendered finer. The moved
            # views alone rewarded that (lower opacity hedges depth errors: DEMO_MODEL.md)
            alpha = render_torch(g, torch.eye(4), K, cfg.size)["alpha"]
            loss = loss + cfg.coverage_weight * (1 - alpha)[views[0].valid].mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
            opt.step()
            step += 1
            value = float(loss.detach())
            losses.append((step, value))
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}")
            if step % cfg.log_every == 0 or step == cfg.steps:
                with open(out / "gs_log.jsonl", "a") as f:
                    f.write(json.dumps({"step": step, "loss": value}) + "\n")
            if on_step is not None:
                on_step(step, value)
            if step % cfg.checkpoint_every == 0:
                save()
        save()
        if step >= cfg.steps:
            with atomic_path(out / "gs_head.pt") as tmp:
                torch.save({"head": head.state_dict(), "feature_dim": head.feature_dim, "hidden": cfg.hidden,
                            "depth_model": cfg.depth_model}, tmp)
    finally:
        bar.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return {"step": step, "interrupted": stop["signal"] is not None and step < cfg.steps, "signal": stop["signal"],
            "losses": losses}


def load_gs_head(path) -> tuple[PointHead | PixelAlignedHead, str | None]:
    """A trained head and the depth model it was trained with; ``"demo"``: the head bundled with the
    demo depth model (infinidepth/assets/DEMO_MODEL.md). The released GS checkpoint gives its
    :class:`PixelAlignedHead` and None: it reads the tokens of a released ``InfiniDepth`` model,
    whichever file that comes from."""
    if str(path) == "demo" and not Path("demo").is_file():  # (a folder named demo here does not hide it)
        from importlib import resources

        with resources.as_file(resources.files("infinidepth") / "assets" / "demo_gs_head.pt") as bundled:
            head, _ = load_gs_head(bundled)
            return head, "demo"
    from infinidepth.checkpoint import load_state_dict_strict, torch_load_inert

    if not Path(path).is_file():
        raise ValueError(f"no GS head file {str(path)!r} (train one with infinidepth train-gs, or pass demo)")
    obj = torch_load_inert(path, "GS head")   # a clear error for a file that is not a PyTorch one; runs no code
    what = f"{path}: not a GS head written by infinidepth train-gs"
    if not isinstance(obj, dict):
        raise ValueError(f"{what} (it holds a {type(obj).__name__}, not a dict)")
    weights = obj["state_dict"] if isinstance(obj.get("state_dict"), dict) else obj
    if PixelAlignedHead.holds(weights):
        return PixelAlignedHead.from_weights({k: v for k, v in weights.items() if isinstance(v, torch.Tensor)}, path), None
    missing = sorted({"head", "feature_dim", "hidden", "depth_model"} - set(obj))
    if missing:
        held = sorted(map(str, obj))
        raise ValueError(f"{what}: it lacks {', '.join(missing)} (it holds {', '.join(held[:5]) or 'nothing'}"
                         f"{', ...' if len(held) > 5 else ''})")
    if not all(type(obj[k]) is int and obj[k] > 0 for k in ("feature_dim", "hidden")) \
            or not isinstance(obj["depth_model"], str):
        raise ValueError(f"{what} (feature_dim {obj['feature_dim']!r}, hidden {obj['hidden']!r}: positive ints; "
                         f"depth_model {obj['depth_model']!r}: a name)")
    if not (isinstance(obj["head"], dict) and all(isinstance(v, torch.Tensor) for v in obj["head"].values())):
        raise ValueError(f"{what} (its head is not a dict of tensors)")
    head = PointHead(obj["feature_dim"], obj["hidden"])
    load_state_dict_strict(head, obj["head"], source=f"GS head {path}")
    return head.eval(), obj["depth_model"]
