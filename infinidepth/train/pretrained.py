"""Pretrained encoder weights from a local file: DINOv3 or DINOv2 in Meta's layout, or another model's.

The encoders here are DINOv3-layout ViTs (RoPE positions, storage tokens, LayerScale), so a DINOv3
backbone checkpoint (``dinov3_vitl16_pretrain_lvd1689m.pth`` and its siblings) loads key for key;
prefixes such as ``module.``, ``backbone.`` or ``teacher.backbone.`` are stripped, and keys DINOv3
keeps for its own heads (``local_cls_norm``, ``head``...) are ignored.

A DINOv2 checkpoint (``dinov2_vitl14_pretrain.pth``, ``dinov2_vitl14_reg4_pretrain.pth`` and their
siblings, or a training checkpoint with chunked blocks) is recognised by its learned ``pos_embed``.
Its positions are absolute, not rotary, and its patches are 14 pixels, so the model's encoder is
rebuilt in DINOv2's layout (``ViTConfig(position="learned")``: the file gives the patch, the
registers and the position grid; the model's preset gives the width, depth and heads, which must
match) and the model's config records it, so the trained model saves and loads as such. Network
inputs must then be multiples of 14. SwiGLU backbones (DINOv2's ViT-g, DINOv3's ViT-S+/H+/7B) are refused.

A model file of our own format (``save_model``, e.g. a finished run's ``model.safetensors``) gives
its encoder: a new decoder head can be trained on an encoder another run learnt (with
``lr_encoder: 0`` it stays frozen).
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import torch

from infinidepth.checkpoint import CheckpointError, load_state_dict_strict, read_torch_weights
from infinidepth.models.vit import ViTConfig, VisionTransformer

PREFIXES = ("module.", "teacher.backbone.", "student.backbone.", "backbone.", "encoder.", "pretrained.", "model.")
IGNORED = ("local_cls_norm.", "head.", "dino_head.", "ibot_head.")


def read_encoder_state(path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no pretrained encoder file {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as f:
            ours = "infinidepth" in (f.metadata() or {})
        if ours:
            from infinidepth.checkpoint import load_model

            from .trainer import encoder_of

            return dict(encoder_of(load_model(path)).state_dict())
        sd = load_file(str(path))
    else:
        sd = read_torch_weights(path, nests=("teacher", "model", "state_dict"))
    changed = True
    while changed:
        changed = False
        # A training checkpoint's teacher holds its heads beside the backbone ({"teacher":
        # {"backbone.*", "dino_head.*", "ibot_head.*"}}): drop them at each level, so that the
        # backbone's prefix is seen on every key that is left.
        sd = {k: v for k, v in sd.items() if not k.startswith(IGNORED)}
        for prefix in PREFIXES:
            if sd and all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix):]: v for k, v in sd.items()}
                changed = True
    return {k: v for k, v in sd.items() if not k.startswith(IGNORED)}


def dinov2_encoder_state(sd: dict[str, torch.Tensor], like: ViTConfig, source) -> tuple[ViTConfig, dict]:
    """A DINOv2 state dict -> (the ViTConfig that holds it, its state dict in our names). ``like``: the
    model's encoder config, whose width, depth and heads the file must have."""
    # training checkpoints chunk the blocks (blocks.<chunk>.<index>.*, the index counted over all chunks)
    sd = {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in sd.items()}
    if "register_tokens" in sd:
        sd["storage_tokens"] = sd.pop("register_tokens")
    needed = ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight")
    missing = [k for k in needed if k not in sd]
    if missing:
        raise CheckpointError(f"{source}: looks like DINOv2 (pos_embed) but lacks {', '.join(missing)}")
    width = sd["cls_token"].shape[-1]
    depth = len({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    patch = sd["patch_embed.proj.weight"].shape[-1]
    positions = sd["pos_embed"].shape[1] - 1
    grid = math.isqrt(positions)
    if grid * grid != positions:
        raise CheckpointError(f"{source}: pos_embed has {positions} patch positions, not a square grid")
    if (width, depth) != (like.embed_dim, like.depth):
        raise CheckpointError(
            f"{source} is a DINOv2 ViT {width} wide with {depth} blocks, the model's encoder is {like.embed_dim} wide "
            f"with {like.depth}: pick the preset of that size (ViT-S: paper-small, ViT-B: paper-base, ViT-L: "
            "paper-large or official-large)")
    registers = sd["storage_tokens"].shape[1] if "storage_tokens" in sd else 0
    for i in range(depth):  # DINOv2 without LayerScale (init_values None) is LayerScale 1
        for name in ("ls1.gamma", "ls2.gamma"):
            sd.setdefault(f"blocks.{i}.{name}", torch.ones(width))
    config = dataclasses.replace(
        like, patch_size=patch, n_storage_tokens=registers, position="learned", pos_grid=grid,
        # how DINOv2's hub builds them: registers came with an antialiased resize to the exact size
        pos_resize="antialias" if registers else "offset", key_bias=True, norm_eps=1e-6,
        ffn_ratio=sd["blocks.0.mlp.fc1.weight"].shape[0] / width)
    return config, sd


def load_pretrained_encoder(model, path) -> None:
    """Load a DINOv3 or DINOv2 backbone (or our model file's encoder) into ``model``'s encoder
    (``model.encoder`` or ``model.pretrained``); a DINOv2 file replaces the encoder by one of its layout."""
    from .trainer import encoder_of

    sd = read_encoder_state(path)
    if any(".mlp.w12." in k or ".mlp.w1." in k for k in sd):
        raise CheckpointError(f"{path}: a SwiGLU feed-forward backbone (DINOv2 ViT-g, DINOv3 ViT-S+/H+/7B); only the "
                              "GELU-MLP backbones (ViT-S/B/L) fit the encoder here")
    if "pos_embed" in sd:
        config, sd = dinov2_encoder_state(sd, encoder_of(model).config, path)
        if config != encoder_of(model).config:
            name = "encoder" if hasattr(model, "encoder") else "pretrained"
            setattr(model, name, VisionTransformer(config).to(model.device))
            model.config.vit = config
    encoder = encoder_of(model)
    own = encoder.state_dict()
    # Buffers the encoder computes itself (RoPE periods) are taken from the file only if present.
    for k in own:
        if k not in sd and k.startswith("rope_embed."):
            sd[k] = own[k]
    try:
        load_state_dict_strict(encoder, sd, source=f"pretrained encoder {path}")
    except CheckpointError as e:
        summary = _layout_mismatch(sd, encoder.config)
        if summary is None:
            raise
        raise CheckpointError(f"pretrained encoder {path}: {summary}\n{e}") from None


def _layout(width, depth, patch, tokens, heads) -> str:
    return f"{width} wide with {depth} blocks, patch {patch}, {tokens} storage tokens" + (f", {heads} heads" if heads else "")


def _layout_mismatch(sd: dict[str, torch.Tensor], like: ViTConfig) -> str | None:
    """The file's ViT (width, depth, patch, storage tokens, heads where its RoPE periods tell) against
    the model's encoder, in words, where they differ; None where they agree or the file does not say."""
    if "cls_token" not in sd or "patch_embed.proj.weight" not in sd:
        return None
    width = sd["cls_token"].shape[-1]
    depth = len({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    patch = sd["patch_embed.proj.weight"].shape[-1]
    tokens = sd["storage_tokens"].shape[1] if "storage_tokens" in sd else 0
    periods = sd.get("rope_embed.periods")
    heads = width // (4 * periods.numel()) if periods is not None and periods.numel() and like.position == "rope" else None
    file = (width, depth, patch, tokens, heads)
    own = (like.embed_dim, like.depth, like.patch_size, like.n_storage_tokens, like.num_heads if heads else None)
    if file == own:
        return None
    if file[:2] != own[:2] or file[4] != own[4]:
        hint = "pick the preset of that size (ViT-S: paper-small, ViT-B: paper-base, ViT-L: paper-large or official-large)"
    else:
        hint = f"the encoder's ViTConfig needs patch_size={patch} and n_storage_tokens={tokens}"
    return f"the file's ViT is {_layout(*file)}; the model's encoder is {_layout(*own)}: {hint}"
