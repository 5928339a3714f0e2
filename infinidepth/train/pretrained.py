"""Pretrained encoder weights from a local file: DINOv3 in Meta's layout, or another model's.

The encoders here are DINOv3-layout ViTs (RoPE positions, storage tokens, LayerScale), so a DINOv3
backbone checkpoint (``dinov3_vitl16_pretrain_lvd1689m.pth`` and its siblings) loads key for key;
prefixes such as ``module.``, ``backbone.`` or ``teacher.backbone.`` are stripped, and keys DINOv3
keeps for its own heads (``local_cls_norm``, ``head``...) are ignored. A DINOv2 checkpoint is
recognised (learned ``pos_embed``, ``register_tokens``) and refused with the reason: its learned
absolute positions have no counterpart in a RoPE encoder, so loading it would silently mis-place
every patch.

A model file of our own format (``save_model``, e.g. a finished run's ``model.safetensors``) gives
its encoder: a new decoder head can be trained on an encoder another run learnt (with
``lr_encoder: 0`` it stays frozen).
"""

from __future__ import annotations

from pathlib import Path

import torch

from infinidepth.checkpoint import CheckpointError, load_state_dict_strict

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
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from e
        sd = obj
        for key in ("teacher", "model", "state_dict"):
            if isinstance(sd, dict) and isinstance(sd.get(key), dict):
                sd = sd[key]
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: expected a state dict")
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if sd and all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix):]: v for k, v in sd.items()}
                changed = True
    return {k: v for k, v in sd.items() if not k.startswith(IGNORED)}


def load_pretrained_encoder(model, path) -> None:
    """Load a DINOv3 backbone (or our model file's encoder) into ``model``'s encoder (``model.encoder``
    or ``model.pretrained``)."""
    from .trainer import encoder_of

    sd = read_encoder_state(path)
    if "pos_embed" in sd or "register_tokens" in sd:
        raise CheckpointError(
            f"{path} is a DINOv2 checkpoint (learned pos_embed {tuple(sd['pos_embed'].shape) if 'pos_embed' in sd else ''}); "
            "InfiniDepth's encoder is the DINOv3 layout with rotary positions, which DINOv2's absolute position "
            "embeddings cannot be mapped onto. Use a DINOv3 checkpoint (e.g. dinov3_vitl16_pretrain_lvd1689m.pth).")
    encoder = encoder_of(model)
    own = encoder.state_dict()
    # Buffers the encoder computes itself (RoPE periods) are taken from the file only if present.
    for k in own:
        if k not in sd and k.startswith("rope_embed."):
            sd[k] = own[k]
    load_state_dict_strict(encoder, sd, source=f"pretrained encoder {path}")
