"""The training loop: sparse sub-pixel supervision, one process or many (torchrun), resumable.

Per image, ``pairs`` coordinate-depth pairs come from the full-resolution ground truth
(``infinidepth.data``). Targets: normalised log-depth (log depth mapped affinely so its 2% and 98%
quantiles over the image's valid ground truth go to 0 and 1: the paper) or min-max disparity (the
released code). Loss: L1 between the network's raw output at the queries and the target.

Never lose work: ``OUT/checkpoint.pt`` (model, optimiser, scheduler, step, RNG states, config; fp16: the loss scale) is
written atomically every ``checkpoint_every`` steps, at the end, and when the process receives
SIGTERM or SIGINT (it finishes the current step first; DataLoader workers ignore both, so a signal
to the whole process group stops the run the same way). ``resume=True`` continues from it; on the
CPU the loss trajectory is the same, to the bit, as an uninterrupted run's: data order and every
random draw depend only on (seed, epoch, index). A NaN or infinite loss (or weights) stops training
with :class:`TrainingDiverged` (a ValueError) naming the step; that step is neither applied nor saved,
so the checkpoint on disk stays the last good one.

Scale-out: under ``torchrun --nproc_per_node=K -m infinidepth.train ...`` each process takes a
disjoint share of every epoch (DistributedSampler) and DistributedDataParallel averages gradients
(NCCL on GPUs, gloo on CPUs). Rank 0 writes checkpoints and logs. The ranks share with each step's
loss whether one of them was signalled, so that all stop after the same step.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from infinidepth.checkpoint import CheckpointError, load_training_state, one_line
from infinidepth.ops import PRECISIONS

from .config import TrainConfig

log = logging.getLogger("infinidepth.train")


class TrainingDiverged(ValueError):
    """The loss or the weights stopped being finite. Training stops at once: that step is not saved,
    so the checkpoint on disk stays the last good one and no model file with NaN weights is written."""


# -- targets -----------------------------------------------------------------------------------------------
def make_targets(coord_depth: torch.Tensor, depth, valid, kind: str) -> torch.Tensor:
    """Per-image normalised targets ``[B, N]`` for metric depths ``coord_depth`` ``[B, N]``, the
    normalisation taken from each image's valid full-resolution ground truth.

    The range divided by is at least 1e-3 (of log-depth; of the largest disparity): an image of
    (nearly) one depth has no scale to normalise by, and its pairs, interpolated in float32, differ
    from that depth by rounding, which a tinier range would blow up into huge targets."""
    out = []
    for b in range(coord_depth.shape[0]):
        v = depth[b][valid[b]].float()
        v = v[:: max(1, v.numel() // 1_000_000)]              # quantiles of at most ~1 M samples
        d = coord_depth[b].float()
        if kind == "log_depth":
            q = torch.quantile(v.log(), torch.tensor([0.02, 0.98]))
            out.append((d.log() - q[0]) / (q[1] - q[0]).clamp_min(1e-3))
        else:
            disp = 1.0 / v
            lo, hi = disp.min(), disp.max()
            out.append((1.0 / d - lo) / (hi - lo).clamp_min(1e-3 * hi))
    return torch.stack(out)


def default_target(model) -> str:
    return "disparity" if model.alignment == "disparity" else "log_depth"


# -- data --------------------------------------------------------------------------------------------------
class _Concat(torch.utils.data.ConcatDataset):
    def set_epoch(self, epoch: int) -> None:
        for d in self.datasets:
            d.set_epoch(epoch)


def build_dataset(cfg: TrainConfig):
    from infinidepth.data import DATASETS, Augment, ProceduralScenes

    augment = Augment(scale=tuple(cfg.augment_scale), flip=cfg.augment_flip, color=cfg.augment_color)
    parts = []
    for s in cfg.data:
        kw = dict(size=tuple(cfg.input_size), n_pairs=cfg.pairs, augment=augment, seed=cfg.seed)
        if s.name == "procedural-live":
            parts.append(ProceduralScenes(s.scenes, render_size=tuple(s.render_size), **kw))
        elif s.name in DATASETS:
            parts.append(DATASETS[s.name](s.root, **kw))
        else:
            raise ValueError(f"unknown data source {s.name!r}; choose from {sorted(DATASETS)} or procedural-live")
    return _Concat(parts)


class _Position(torch.utils.data.Sampler):
    """This rank's share of epoch ``epoch`` (DistributedSampler order), from batch ``start`` on."""

    def __init__(self, n: int, world: int, rank: int, seed: int, batch: int):
        self.inner = torch.utils.data.DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                                         drop_last=True)
        self.batch, self.start = batch, 0

    def set_position(self, epoch: int, start_batch: int) -> None:
        self.inner.set_epoch(epoch)
        self.start = start_batch

    def __iter__(self):
        return iter(list(self.inner)[self.start * self.batch:])

    def __len__(self) -> int:
        return len(self.inner) - self.start * self.batch

    def batches_per_epoch(self) -> int:
        return len(self.inner) // self.batch


# -- model, optimiser, schedule ------------------------------------------------------------------------------
def build_model(cfg: TrainConfig):
    from infinidepth.checkpoint import load_model
    from infinidepth.models import from_preset, PRESETS

    model = from_preset(cfg.model, seed=cfg.seed) if cfg.model in PRESETS else load_model(cfg.model)
    if cfg.pretrained_encoder:
        from .pretrained import load_pretrained_encoder

        load_pretrained_encoder(model, cfg.pretrained_encoder)
    h, w = cfg.input_size
    p = model.patch_size
    if h % p or w % p:
        near = f"{max(p, round(h / p) * p)}x{max(p, round(w / p) * p)}"
        raise ValueError(f"input_size must be multiples of the encoder's patch, {p}: got {h}x{w} (nearest: {near})")
    return model


def encoder_of(model) -> torch.nn.Module:
    return getattr(model, "encoder", None) or getattr(model, "pretrained")


def build_optimizer(model, cfg: TrainConfig):
    """AdamW over two groups, encoder and the rest. ``lr_encoder == 0`` freezes the encoder: its
    parameters stop requiring gradients, so the backward pass ends at its output (cheaper), and its
    group stays empty."""
    if cfg.lr_encoder == 0:
        encoder_of(model).requires_grad_(False)
    enc = {id(p) for p in encoder_of(model).parameters()}
    trained = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trained if id(p) in enc], "lr": cfg.lr_encoder, "name": "encoder"},
        {"params": [p for p in trained if id(p) not in enc], "lr": cfg.lr_decoder, "name": "decoder"},
    ]
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)

    def factor(step: int) -> float:            # linear warm-up, then cosine to 0 at cfg.steps
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, model, opt, sched, step: int, cfg: TrainConfig, extra: dict | None = None) -> None:
    """Everything needed to continue, written atomically (a crash mid-write keeps the old file)."""
    from infinidepth.io import atomic_path

    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step,
             "rng": _rng_state(), "config": cfg.to_dict(), "arch": model.arch, "model_config": model.config_dict(),
             **(extra or {})}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


RESUME_KEYS = ("model", "optimizer", "scheduler", "step", "rng", "config")
# Where the run folder is, how many processes load the data (each sample depends on (seed, epoch,
# index) only) and how often it logs and saves change nothing the run computes: a resume may change
# them, to continue a run folder moved to another disk, or on a machine with fewer cores.
FREE_ON_RESUME = ("out", "num_workers", "log_every", "checkpoint_every")


def read_resume_checkpoint(path: Path, cfg: TrainConfig) -> dict:
    """The state in ``path`` to continue ``cfg`` from; a ValueError naming the problem when the file is
    missing, damaged, not a training checkpoint, or was written for another config."""
    if path.is_dir():   # (without --resume it is "a checkpoint that exists": name what it is)
        raise ValueError(f"--resume: {path} is a folder, not a checkpoint file; move it away")
    if not path.is_file():
        raise ValueError(f"--resume: no checkpoint at {path} (nothing to continue: run without --resume to start)")
    try:
        state = load_training_state(path)   # runs no code named by the file
    except CheckpointError as e:  # truncated, overwritten or foreign: the error says which
        raise ValueError(f"--resume: {e}; restore a copy, or delete it to start the run over") from e
    missing = [k for k in RESUME_KEYS if k not in state] if isinstance(state, dict) else list(RESUME_KEYS)
    if missing:
        raise ValueError(f"--resume: {path} is not a checkpoint of infinidepth train (it lacks {', '.join(missing)})")
    saved = state["config"] if isinstance(state["config"], dict) else {}
    saved = {k: v for k, v in saved.items() if k not in FREE_ON_RESUME}
    now = {k: v for k, v in cfg.to_dict().items() if k not in FREE_ON_RESUME}
    if saved != now:
        changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        why = ""
        if "steps" in changed:  # the cosine schedule ends at cfg.steps: a longer run is another run from step 0 on
            why = (f"; steps sets the learning-rate schedule (warm-up, then cosine to 0 at the last step), so a run "
                   f"cannot be extended: start a new run with another --out and model: {Path(cfg.out) / 'model.safetensors'} "
                   f"to train its weights further")
        raise ValueError(f"--resume: the config differs from the checkpoint's in {', '.join(changed)}{why}")
    return state


def _kept(ckpt_path: Path, saved_step: int | None) -> str:
    return f"{ckpt_path} holds step {saved_step}, the last good one" if saved_step is not None else "no checkpoint was written"


def _check_weights(model, step: int, ckpt_path: Path, saved_step: int | None) -> None:
    """Refuse to go on (and so to save) with non-finite weights."""
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise TrainingDiverged(f"training stopped at step {step}: {len(bad)} weight tensors hold NaN or infinite values "
                               f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); this step was not saved "
                               f"({_kept(ckpt_path, saved_step)}). Lower the learning rates or use precision fp32")


# -- the loop --------------------------------------------------------------------------------------------------
def _leave_stop_signals_to_the_trainer(worker_id: int) -> None:
    """DataLoader workers ignore SIGTERM and SIGINT. Ctrl-C, a batch system's cancel and torchrun's
    shutdown signal the whole process group: a killed worker made the next batch raise and the run
    end without its checkpoint. The main process stops the workers itself once it has saved
    (:func:`_stop_workers`)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stop_workers(batches) -> None:
    """Shut a DataLoader iterator's workers down now, and SIGKILL any still alive after: they ignore
    the SIGTERM that torch's shutdown ends with, and one stuck in a read (a hung network file) would
    otherwise keep Python's exit waiting for it. At once, because an error's traceback holds the
    iterator, which would leave them running."""
    if hasattr(batches, "_shutdown_workers"):
        batches._shutdown_workers()
        for w in getattr(batches, "_workers", []):
            if w.is_alive():
                w.kill()
                w.join(timeout=5)


def _distributed():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return rank, world, device


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, on_step=None) -> dict:
    """Train per ``cfg``; returns ``{"step", "interrupted", "losses": [(step, loss, lr), ...] of this run}``.

    ``on_step(step, loss)`` is called after every step (tests, custom logging)."""
    from tqdm import tqdm

    from infinidepth.checkpoint import save_model
    from infinidepth.data import collate

    # Every check before any work or any file: the config, the checkpoint to resume, the model (its
    # patch against input_size) and the data; OUT is created only once they pass.
    cfg.validate()
    rank, world, device = _distributed()
    if rank == 0 and cfg.warmup_steps >= cfg.steps:
        log.warning("warmup_steps (%d) is not below steps (%d): the learning rates rise for the whole run and "
                    "never reach lr_encoder / lr_decoder; lower warmup_steps for a short run",
                    cfg.warmup_steps, cfg.steps)
    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.pt"
    if rank == 0:
        if not resume and ckpt_path.exists():
            raise FileExistsError(f"{ckpt_path} exists: pass --resume to continue it, or choose another out folder")
        if not resume and (out / "model.safetensors").exists():   # a finished run whose checkpoint was deleted
            raise FileExistsError(f"{out / 'model.safetensors'} exists (a finished run's model): choose another out "
                                  "folder, or move it away to train again here")
    state = read_resume_checkpoint(ckpt_path, cfg) if resume else None
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)

    model = build_model(cfg).to(device).train()
    kind = default_target(model) if cfg.target == "auto" else cfg.target
    opt, sched = build_optimizer(model, cfg)
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    amp_dtype = PRECISIONS[precision]
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    step = 0
    if state is not None:
        try:  # the same config can build another model: a model file named in it may have been replaced
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            if scaler is not None and state.get("scaler"):   # fp16: the loss scale reached, not the initial one again
                scaler.load_state_dict(state["scaler"])
            step = int(state["step"])
            _set_rng_state(state["rng"])
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            raise ValueError(f"--resume: {ckpt_path} does not fit the model and optimiser built from the config "
                             f"({one_line(e)})") from e
    # Some parameters never reach the loss by design (the ViT mask token kept for the key layout).
    net = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True) if world > 1 else model

    dataset = build_dataset(cfg)
    sampler = _Position(len(dataset), world, rank, cfg.seed, cfg.batch_size)
    per_epoch = sampler.batches_per_epoch()
    if per_epoch == 0:
        raise ValueError(f"{len(dataset)} frames are too few for batch_size {cfg.batch_size} on {world} process(es)")
    out.mkdir(parents=True, exist_ok=True)
    saved_step = step if state is not None else None          # the step of the last good checkpoint on disk

    stop = {"signal": None}
    previous = {}
    if rank == 0 or world > 1:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                previous[sig] = signal.signal(sig, lambda s, f: stop.update(signal=s))
            except ValueError:  # not the main thread: no handlers, no graceful stop
                pass

    writer = _tensorboard(out) if rank == 0 else None
    log_path = out / "log.jsonl"
    if rank == 0:
        trim_log(log_path, step)
    losses = []
    bar = tqdm(total=cfg.steps, initial=step, desc="training", unit="step", disable=not progress or rank != 0)
    seen = 0
    batches = None
    stopping = False          # a stop signal, agreed on by all ranks
    try:
        while step < cfg.steps and not stopping:
            epoch, offset = divmod(step, per_epoch)
            sampler.set_position(epoch, offset)
            dataset.set_epoch(epoch)
            loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                                                 num_workers=cfg.num_workers, collate_fn=collate,
                                                 worker_init_fn=_leave_stop_signals_to_the_trainer)
            batches = iter(loader)
            for batch in batches:
                t0 = time.perf_counter()
                image = batch["image"].to(device)
                coords = batch["coords"].to(device)
                target = make_targets(batch["coord_depth"], batch["depth"], batch["valid"], kind).to(device)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    pred = net(image, coords)
                loss = (pred.float() - target).abs().mean()
                value = loss.detach()
                if world > 1:
                    # One reduction for the mean loss and whether a rank was signalled: every rank sees
                    # the same values, so all stop together (on divergence, or after this step).
                    shared = torch.stack([value.float(), torch.tensor(float(stop["signal"] is not None), device=device)])
                    dist.all_reduce(shared)
                    value, stopping = shared[0] / world, bool(shared[1] > 0)
                value = float(value)
                if not math.isfinite(value):
                    raise TrainingDiverged(f"training stopped at step {step + 1}: the loss is {value}; this step was not "
                                           f"applied or saved ({_kept(ckpt_path, saved_step)}). Lower the learning "
                                           "rates, use precision fp32, or check the data for bad depth values")
                opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(opt)
                else:
                    loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                if scaler is not None:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                lr, lr_encoder = opt.param_groups[1]["lr"], opt.param_groups[0]["lr"]   # the rates this step used
                with warnings.catch_warnings():
                    # fp16: a step GradScaler skipped (gradients overflowed) still counts as a step of the schedule,
                    # as intended (the rate is a function of the step, on resume too); torch warns about it when the
                    # very first steps are skipped, as if the order of calls were wrong.
                    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step[(][)]` before")
                    sched.step()
                step += 1
                seen += image.shape[0]
                losses.append((step, value, lr))
                if rank == 0:
                    bar.update(1)
                    bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}")
                    if step % cfg.log_every == 0 or step == cfg.steps:
                        _log(log_path, {"step": step, "loss": value, "lr": lr, "lr_encoder": lr_encoder,
                                        "seconds_per_step": time.perf_counter() - t0, "world_size": world})
                        if writer is not None:
                            writer.add_scalar("loss", value, step)
                            writer.add_scalar("lr", lr, step)
                if on_step is not None:
                    on_step(step, value)
                if step % cfg.checkpoint_every == 0:
                    _check_weights(model, step, ckpt_path, saved_step)     # every rank: the replicas are identical
                    if rank == 0:
                        save_checkpoint(ckpt_path, model, opt, sched, step, cfg, _scaler_state(scaler))
                        saved_step = step
                if world == 1:
                    stopping = stop["signal"] is not None
                if step >= cfg.steps or stopping:
                    break
        _check_weights(model, step, ckpt_path, saved_step)
        if rank == 0:
            save_checkpoint(ckpt_path, model, opt, sched, step, cfg, _scaler_state(scaler))
            if step >= cfg.steps:
                model.input_size = tuple(cfg.input_size)
                save_model(model.eval(), out / "model.safetensors")
        _log(out / "ranks.jsonl", {"rank": rank, "step": step, "samples": seen,
                                   "param_sum": float(sum(p.detach().double().sum() for p in model.parameters()))})
    finally:
        _stop_workers(batches)
        bar.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if writer is not None:
            writer.close()
        if world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    if stopping and rank == 0:
        if step >= cfg.steps:   # the signal came during the last step: nothing is left to continue
            log.warning("signal %s came during the last step; the run is complete: %s",
                        stop["signal"] or "to another rank", out / "model.safetensors")
        else:
            log.warning("stopped by signal %s at step %d; checkpoint saved to %s (continue with --resume)",
                        stop["signal"] or "to another rank", step, ckpt_path)
    # interrupted: stopped by a signal before the last step ("signal": which, None when it went to another rank)
    return {"step": step, "interrupted": stopping and step < cfg.steps, "signal": stop["signal"], "losses": losses,
            "target": kind, "world_size": world}


def _scaler_state(scaler) -> dict | None:
    """fp16's loss scale (and its growth tracker) for the checkpoint: a resume that started again
    from the initial scale would skip steps to overflow the uninterrupted run applied."""
    return {"scaler": scaler.state_dict()} if scaler is not None else None


def _log(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def trim_log(path: Path, step: int) -> None:
    """On resume, drop log lines past the checkpoint (they will be logged again), and any line that is
    not a whole record: a run killed while appending leaves its last line cut short."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            keep.append(line)
    from infinidepth.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in keep))


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))
