"""Sparse metric depth as prompt tokens (``InfiniDepth_DepthSensor``'s prompt model).

Each valid sparse sample becomes a token (an MLP of its median-normalised disparity); the tokens
join the last ViT layer's patch tokens, separated by a learned token, in 4 joint self-attention
blocks whose q and k get a random-Fourier position code added and a per-head LayerNorm ("qk" mode).
Only the patch tokens come out. Module names mirror the released checkpoint's keys
(``prompt_model.prompt_model.0.*``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from infinidepth.ops.gather import require


class FourierPositions(nn.Module):
    """Random Fourier features of positions in [0, 1]^2 given as (x, y)."""

    def __init__(self, num_feats: int):
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_feats))

    def encode(self, xy: torch.Tensor) -> torch.Tensor:
        proj = 2 * math.pi * ((2 * xy - 1) @ self.positional_encoding_gaussian_matrix)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)

    def grid(self, h: int, w: int) -> torch.Tensor:
        """Codes of an h x w grid's cell centres, ``[h*w, C]`` in row-major order."""
        dev = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, device=dev, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=dev, dtype=torch.float32) + 0.5) / w
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        return self.encode(torch.stack([gx, gy], dim=-1)).reshape(h * w, -1)


class QKNormAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim // num_heads)
        self.norm2 = nn.LayerNorm(dim // num_heads)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).unbind(2)
        pos = pos.reshape(pos.shape[0], N, self.num_heads, C // self.num_heads)
        q = self.norm1(q + pos)
        k = self.norm2(k + pos)
        x = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class PromptBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = QKNormAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(dim, 4 * dim)
        self.mlp.fc2 = nn.Linear(4 * dim, dim)
        self.sep = nn.Parameter(torch.randn(1, 1, dim))
        self.sep_pe = nn.Parameter(torch.randn(1, 1, dim))

    def forward(self, image_tokens, image_pos, prompt_tokens, prompt_pos):
        n_img = image_tokens.shape[1]
        x = torch.cat([image_tokens, self.sep, prompt_tokens], dim=1)
        pos = torch.cat([image_pos, self.sep_pe, prompt_pos], dim=1)
        x = x + self.attn(self.norm1(x), pos)
        x = x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))
        return x[:, :n_img], x[:, n_img + 1 :]


class SparseDepthPrompt(nn.Module):
    def __init__(self, dim: int, num_blocks: int = 4, num_heads: int = 4):
        super().__init__()
        self.pe_layer = FourierPositions(dim // 2)
        self.prompt_blocks = nn.ModuleList(PromptBlock(dim, num_heads) for _ in range(num_blocks))
        self.depth2feature = nn.Sequential(nn.Linear(1, dim // 2), nn.GELU(), nn.Linear(dim // 2, dim))

    def forward(self, tokens: torch.Tensor, prompt: torch.Tensor, patch_h: int, patch_w: int) -> torch.Tensor:
        """``tokens`` [B, h*w, D] patch tokens; ``prompt`` [B, 1, H, W] normalised disparity, 0 = none
        (any size: a sample's position is its pixel centre relative to the prompt's own H x W)."""
        if tokens.dim() != 3 or tokens.shape[1] != patch_h * patch_w:
            raise ValueError(f"tokens must have shape [B, {patch_h * patch_w}, D] for a {patch_h}x{patch_w} patch grid, "
                             f"got {tuple(tokens.shape)}")
        if prompt.dim() != 4 or prompt.shape[0] != tokens.shape[0] or prompt.shape[1] != 1:
            raise ValueError(f"prompt must have shape [{tokens.shape[0]}, 1, H, W] (one map per image), "
                             f"got {tuple(prompt.shape)}")
        # a NaN would be dropped as "missing" (NaN > 0 is false), an inf would turn every token to NaN
        require(torch.isfinite(prompt).all(), "prompt contains NaN or infinite values; mark missing samples with 0")
        H, W = prompt.shape[-2:]
        image_pos = self.pe_layer.grid(patch_h, patch_w)[None]
        out = []
        for b in range(tokens.shape[0]):
            valid = prompt[b, 0] > 0
            # (The depth-sensor model refuses a prompt with no valid value before it gets here, so a
            # traced graph, which cannot branch on a value, leaves the branch out.)
            if not torch.compiler.is_compiling() and not valid.any():
                out.append(tokens[b : b + 1])
                continue
            ij = valid.nonzero().float()  # row-major order of the valid pixels
            xy = torch.stack([(ij[:, 1] + 0.5) / W, (ij[:, 0] + 0.5) / H], dim=-1)
            prompt_tokens = self.depth2feature(prompt[b, 0][valid][:, None])[None]
            prompt_pos = self.pe_layer.encode(xy)[None]
            query = tokens[b : b + 1]
            for block in self.prompt_blocks:
                query, prompt_tokens = block(query, image_pos, prompt_tokens, prompt_pos)
            out.append(query)
        return torch.cat(out, dim=0)


class PromptModel(nn.Module):
    """Holder that reproduces the released key prefix ``prompt_model.prompt_model.0``."""

    def __init__(self, dim: int):
        super().__init__()
        self.prompt_model = nn.ModuleList([SparseDepthPrompt(dim)])

    def forward(self, tokens, prompt, patch_h, patch_w):
        return self.prompt_model[0](tokens, prompt, patch_h, patch_w)
