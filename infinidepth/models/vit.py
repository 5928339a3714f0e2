"""A DINOv3-layout Vision Transformer (patch 16), in plain PyTorch; also the DINOv2 layout.

Parameter names and shapes follow Meta's DINOv3 release, so its checkpoints (and the ViT inside the
released InfiniDepth checkpoints) load strictly: CLS + storage tokens, axial RoPE (no learned
position embedding), LayerScale, and a qkv bias multiplied by a stored ``bias_mask`` (DINOv3 zeroes
the key bias that way). Attention is ``scaled_dot_product_attention``.

``position="learned"`` is DINOv2's layout instead (``train/pretrained.py`` builds it from a DINOv2
file): a learned ``pos_embed`` over a square grid of patches, resized bicubically to each input's
token grid, a full qkv bias, registers in place of storage tokens (they get no position), LayerNorm
eps 1e-6. ``pos_resize`` says how DINOv2 resized it: ``"offset"`` (the original models: a scale
factor of (n + 0.1) / grid, no antialiasing) or ``"antialias"`` (the models with registers: the
exact size, antialiased).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ViTConfig:
    embed_dim: int
    depth: int
    num_heads: int
    ffn_ratio: float = 4.0
    n_storage_tokens: int = 4
    patch_size: int = 16
    rope_base: float = 100.0
    norm_eps: float = 1e-5
    layerscale_init: float = 1e-5
    position: str = "rope"  # "rope" (DINOv3) or "learned" (DINOv2's pos_embed)
    pos_grid: int = 0  # side of the learned position grid (DINOv2: 37, for 518-pixel training crops)
    pos_resize: str = "offset"  # how the learned grid is resized: "offset" or "antialias" (see above)
    key_bias: bool = False  # DINOv2 has a key bias; DINOv3 masks it out (bias_mask)

    def __post_init__(self):
        if self.position not in ("rope", "learned"):
            raise ValueError(f"ViT position must be 'rope' or 'learned', got {self.position!r}")
        if self.position == "learned" and self.pos_grid <= 0:
            raise ValueError("a learned position embedding needs pos_grid > 0 (the side of its square grid)")
        if self.pos_resize not in ("offset", "antialias"):
            raise ValueError(f"ViT pos_resize must be 'offset' or 'antialias', got {self.pos_resize!r}")

    def to_dict(self) -> dict:
        return asdict(self)


VIT_SIZES = {
    "tiny": ViTConfig(embed_dim=64, depth=4, num_heads=2),
    "small": ViTConfig(embed_dim=384, depth=12, num_heads=6),
    "base": ViTConfig(embed_dim=768, depth=12, num_heads=12),
    "large": ViTConfig(embed_dim=1024, depth=24, num_heads=16),
}


def rope_rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


class RopeEmbedding(nn.Module):
    """Axial rotary embedding; coordinates of patch centres normalised per axis to [-1, 1]."""

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"RoPE needs a head dimension divisible by 4, got {head_dim}")
        periods = base ** (2 * torch.arange(head_dim // 4, dtype=torch.float32) / (head_dim // 2))
        self.register_buffer("periods", periods, persistent=True)

    def forward(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.periods.device
        ys = torch.arange(0.5, h, device=dev, dtype=torch.float32) / h
        xs = torch.arange(0.5, w, device=dev, dtype=torch.float32) / w
        coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).flatten(0, 1) * 2 - 1  # [hw, 2]
        angles = 2 * math.pi * coords[:, :, None] / self.periods.float()[None, None, :]  # [hw, 2, D/4]
        angles = angles.flatten(1, 2).tile(2)  # [hw, D]
        return torch.sin(angles), torch.cos(angles)


class MaskedBiasLinear(nn.Linear):
    """qkv projection whose bias is multiplied by ``bias_mask`` (1 for q and v, 0 for k)."""

    def __init__(self, dim: int):
        super().__init__(dim, 3 * dim, bias=True)
        mask = torch.ones(3 * dim)
        mask[dim : 2 * dim] = 0
        self.register_buffer("bias_mask", mask, persistent=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias * self.bias_mask.to(self.bias.dtype))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, key_bias: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim) if key_bias else MaskedBiasLinear(dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, heads, N, d]
        if rope is None:  # learned absolute positions, already in the tokens
            x = F.scaled_dot_product_attention(q, k, v)
            return self.proj(x.transpose(1, 2).reshape(B, N, C))
        sin, cos = rope
        prefix = N - sin.shape[0]  # CLS and storage tokens get no rotation

        def rotate(t):
            body = t[:, :, prefix:].to(sin.dtype)
            body = body * cos + rope_rotate_half(body) * sin
            return torch.cat([t[:, :, :prefix], body.to(t.dtype)], dim=2)

        x = F.scaled_dot_product_attention(rotate(q), rotate(k), v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        d = cfg.embed_dim
        self.norm1 = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.attn = Attention(d, cfg.num_heads, cfg.key_bias)
        self.ls1 = LayerScale(d, cfg.layerscale_init)
        self.norm2 = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.mlp = Mlp(d, int(d * cfg.ffn_ratio))
        self.ls2 = LayerScale(d, cfg.layerscale_init)

    def forward(self, x: torch.Tensor, rope) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.config = cfg
        d = cfg.embed_dim
        self.patch_size = cfg.patch_size
        self.patch_embed = PatchEmbed(cfg.patch_size, d)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        # DINOv2 without registers has none (and no key for them)
        self.storage_tokens = nn.Parameter(torch.randn(1, cfg.n_storage_tokens, d) * 0.02) if cfg.n_storage_tokens else None
        self.mask_token = nn.Parameter(torch.zeros(1, d))  # unused at inference; kept for the key layout
        if cfg.position == "rope":
            self.rope_embed = RopeEmbedding(d // cfg.num_heads, cfg.rope_base)
        else:
            self.pos_embed = nn.Parameter(torch.randn(1, 1 + cfg.pos_grid**2, d) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def learned_positions(self, h: int, w: int) -> torch.Tensor:
        """DINOv2's position embedding of an h x w token grid ``[1, h*w, D]``: the learned square grid
        resized bicubically (in fp32), or as it is when the grid already has that size."""
        g, d = self.config.pos_grid, self.config.embed_dim
        grid = self.pos_embed[:, 1:]
        if (h, w) == (g, g):
            return grid
        grid = grid.float().reshape(1, g, g, d).permute(0, 3, 1, 2)
        if self.config.pos_resize == "offset":
            # the scale factor, not the size, sets where the samples fall: (n + 0.1) / g (DINOv2's
            # historical work-around for rounding; its original checkpoints were trained with it)
            grid = F.interpolate(grid, scale_factor=((h + 0.1) / g, (w + 0.1) / g), mode="bicubic", antialias=False)
        else:
            grid = F.interpolate(grid, size=(h, w), mode="bicubic", antialias=True)
        if grid.shape[-2:] != (h, w):
            raise RuntimeError(f"position grid resized to {tuple(grid.shape[-2:])}, expected {(h, w)}")
        return grid.permute(0, 2, 3, 1).reshape(1, h * w, d).to(self.pos_embed.dtype)

    def intermediate_layers(self, x: torch.Tensor, layers: list[int]) -> list[torch.Tensor]:
        """Normalised patch tokens ``[B, h*w, D]`` after each block index in ``layers``."""
        bad = [i for i in layers if not 0 <= i < len(self.blocks)]
        if bad:
            raise ValueError(f"intermediate layers {bad} out of range: this ViT has blocks 0..{len(self.blocks) - 1}")
        B, _, H, W = x.shape
        p = self.patch_size
        h, w = H // p, W // p
        tokens = self.patch_embed(x)
        cls = self.cls_token
        if self.config.position == "learned":
            tokens = tokens + self.learned_positions(h, w)
            cls = cls + self.pos_embed[:, :1]
            rope = None
        else:
            rope = self.rope_embed(h, w)
        prefix = cls if self.storage_tokens is None else torch.cat([cls, self.storage_tokens], dim=1)
        tokens = torch.cat([prefix.expand(B, -1, -1), tokens], dim=1)
        wanted = set(layers)
        out = {}
        for i, blk in enumerate(self.blocks):
            tokens = blk(tokens, rope)
            if i in wanted:
                out[i] = self.norm(tokens)[:, 1 + self.config.n_storage_tokens :]
            if len(out) == len(wanted):
                break
        return [out[i] for i in layers]


def default_layers(depth: int, count: int) -> list[int]:
    """Which blocks feed the decoder: the released choice for 24 and 12 blocks, spread evenly otherwise."""
    four = {24: [4, 11, 17, 23], 12: [2, 5, 8, 11]}.get(depth) or [max(0, round((i + 1) * depth / 4) - 1) for i in range(4)]
    if count == 4:
        return four
    if count == 3:  # the paper pyramid: shallow, middle, last
        return [four[0], four[1], four[3]]
    if count == 1:
        return [depth - 1]
    raise ValueError(f"no default for {count} layers")
