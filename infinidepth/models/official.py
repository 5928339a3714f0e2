"""The released InfiniDepth models, parameter for parameter (keys as in the Lightning checkpoints
after stripping ``pipeline.``), in plain PyTorch.

* ``InfiniDepth``: DINOv3 ViT (last layer's normalised patch tokens, stride 16) and a CNN branch
  (stride 4) on ``2*I - 1``; the decoder samples both at the query, concatenates, and runs an MLP
  (ReLU, ELU out). Output: normalised disparity; depth = 1 / clamp(disparity, 5e-3).
* ``InfiniDepth_DepthSensor``: the same, with sparse metric depth injected as prompt tokens into
  the last layer's tokens. The prompt is disparity divided by its median; the output is multiplied
  back (the "unwarp"), so it is metric disparity.

As released, query coordinates are clamped to [-1 + 1e-6, 1 - 1e-6] before sampling.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from infinidepth.ops import ConcatDecoder, implicit_decode
from infinidepth.ops.gather import require

from .base import Features, ImplicitDepthModel, check_image
from .cnn import BasicEncoder
from .prompt import PromptModel
from .vit import VIT_SIZES, ViTConfig, VisionTransformer, default_layers

DISPARITY_FLOOR = 5e-3  # the released depth = 1 / clamp(disparity, 5e-3)
# The prompt's median disparity is floored before the prompt is divided by it and the output multiplied
# by it. The released code floors the division at 1e-2 and the product at 1e-3; one floor for both keeps
# the output in proportion to the sensor's depths when the median depth is beyond 100 m, and is the
# released arithmetic below it. The released WarpMedian (in training and in its inference alike) takes the
# median from its dense ground-truth input instead when the prompt's median is <= 1e-2 or the prompt has
# 5 valid samples or fewer; here there is no dense input and the prompt's own median is used, so for such
# prompts the normaliser, and with it the output, differs from the released one.
PROMPT_MEDIAN_FLOOR = 1e-3
# Most sparse samples per image: each is a token in the prompt's attention, whose cost grows with
# their square (a dense 768x1024 map would be 786k tokens); the released model was trained on sparse ones.
MAX_PROMPT_SAMPLES = 2**16
COORD_CLAMP = 1e-6
# The network input of the released inference script (its default, 768x1024): what a released file,
# which records no input size, is run at by default (aspect kept, about as many pixels).
RELEASED_INPUT = (768, 1024)


@dataclass
class OfficialConfig:
    vit: ViTConfig = field(default_factory=lambda: VIT_SIZES["large"])
    cnn_dim: int = 128
    hidden: tuple[int, ...] = (1024, 256, 32)
    layer: int | None = None  # the ViT block whose tokens are decoded (default: the last)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "OfficialConfig":
        d = dict(d)
        d["vit"] = ViTConfig(**d["vit"])
        d["hidden"] = tuple(d["hidden"])
        return cls(**d)


class _MLPLayers(nn.Module):
    """``out_layer.layers``: Linear/ReLU pairs numbered as nn.Sequential numbers them (0, 2, 4, ...)."""

    def __init__(self, dims: list[int]):
        super().__init__()
        mods = []
        for i in range(len(dims) - 1):
            mods.append(nn.Linear(dims[i], dims[i + 1]))
            mods.append(nn.ReLU() if i < len(dims) - 2 else nn.ELU())
        self.layers = nn.Sequential(*mods)

    def linears(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(m.weight, m.bias) for m in self.layers if isinstance(m, nn.Linear)]


class _ImplicitHead(nn.Module):
    def __init__(self, in_dim: int, hidden: tuple[int, ...]):
        super().__init__()
        self.out_layer = _MLPLayers([in_dim, *hidden, 1])


class InfiniDepth(ImplicitDepthModel):
    arch = "InfiniDepth"
    output_space = "normalised disparity (relative)"
    alignment = "disparity"
    Config = OfficialConfig

    def __init__(self, config: OfficialConfig | None = None):
        super().__init__()
        self.config = config or OfficialConfig()
        cfg = self.config
        self.pretrained = VisionTransformer(cfg.vit)
        self.basic_encoder = BasicEncoder(cfg.cnn_dim)
        self.depth_implicit_head = _ImplicitHead(cfg.vit.embed_dim + cfg.cnn_dim, cfg.hidden)
        self.layer = cfg.layer if cfg.layer is not None else default_layers(cfg.vit.depth, 1)[0]

    def _prompt(self, image: torch.Tensor, sparse_depth, tokens, h, w):
        if sparse_depth is not None:
            raise ValueError(f"{self.arch} takes no sparse depth; use an InfiniDepth_DepthSensor checkpoint")
        return tokens, None

    def features(self, image: torch.Tensor, sparse_depth: torch.Tensor | None = None) -> Features:
        check_image(image, self.pretrained.patch_size)
        h16, w16 = -(-image.shape[-2] // 16), -(-image.shape[-1] // 16)
        if h16 * w16 < 2:  # the CNN branch's instance norms need two cells at its stride 16
            raise ValueError(f"image must span at least two 16-pixel cells (16x32 or 32x16), got {tuple(image.shape[-2:])}")
        image = image.to(self.device, torch.float32)
        B, _, H, W = image.shape
        h, w = H // self.pretrained.patch_size, W // self.pretrained.patch_size
        tokens = self.pretrained.intermediate_layers((image - self._mean) / self._std, [self.layer])[0]
        prompted, scale = self._prompt(image, sparse_depth, tokens, h, w)
        vit_map = prompted.transpose(1, 2).reshape(B, -1, h, w)
        before = vit_map if prompted is tokens else tokens.transpose(1, 2).reshape(B, -1, h, w)
        cnn_map = self.basic_encoder(2 * image - 1)
        return Features(maps=[vit_map, cnn_map], image_size=(H, W), disparity_scale=scale, tokens=before)

    def decoder_weights(self) -> ConcatDecoder:
        return ConcatDecoder(self.depth_implicit_head.out_layer.linears())

    def decode_raw(self, feats, coords, backend, chunk, with_grad=False):
        clamped = coords.clamp(-1 + COORD_CLAMP, 1 - COORD_CLAMP)
        out = implicit_decode(feats.maps, clamped, self.decoder_weights(), backend=backend, chunk=chunk, cache=feats.extras,
                              precision=self.precision, with_grad=with_grad)
        if not with_grad:
            return out
        value, grad = out
        return value, grad * (clamped == coords).to(grad.dtype)  # flat where the query was clamped

    def to_depth(self, raw: torch.Tensor) -> torch.Tensor:
        return 1.0 / raw.clamp(min=DISPARITY_FLOOR)


def sparse_disparity(sparse_depth: torch.Tensor) -> torch.Tensor:
    """Metric depth (0 = missing) to disparity (0 = missing), as the released pipeline feeds the prompt."""
    disp = torch.zeros_like(sparse_depth)
    valid = sparse_depth > 0
    disp[valid] = 1.0 / sparse_depth[valid]
    return disp


class InfiniDepthDepthSensor(InfiniDepth):
    arch = "InfiniDepth_DepthSensor"
    output_space = "metric disparity (1/m)"
    alignment = None

    def __init__(self, config: OfficialConfig | None = None):
        super().__init__(config)
        self.prompt_model = PromptModel(self.config.vit.embed_dim)

    def _prompt(self, image, sparse_depth, tokens, h, w):
        if sparse_depth is None:
            raise ValueError("InfiniDepth_DepthSensor needs sparse_depth: a metric depth map [B, 1, H, W], 0 = missing")
        sparse_depth = check_sparse_depth(sparse_depth, image).to(self.device, torch.float32)
        disp = sparse_disparity(sparse_depth)
        medians = []
        for b in range(disp.shape[0]):
            valid = disp[b] > 0
            require(valid.any(), f"sparse_depth of image {b} has no valid (positive) value")
            require(valid.sum() <= MAX_PROMPT_SAMPLES, lambda eager, b=b, valid=valid: (
                f"sparse_depth of image {b} has {int(valid.sum()) if eager else 'too many'} valid samples; the prompt takes "
                f"at most {MAX_PROMPT_SAMPLES} (its attention's cost grows with their square): keep a random subset, "
                "as infinidepth predict --max-prompt-points does (default 1500)"))
            medians.append(median_of(disp[b][valid]))
        median = torch.stack(medians).clamp(min=PROMPT_MEDIAN_FLOOR)
        prompt = disp / median.view(-1, 1, 1, 1)  # the released "warp"
        tokens = self.prompt_model(tokens, prompt, h, w)
        # a sample ~1e18 times nearer than the median (depths of 1e-20 m pass the checks above) overflows
        # the prompt's attention: every token, so the whole depth map, would be NaN
        require(torch.isfinite(tokens).all(), lambda eager: (
            "sparse_depth spans too wide a range for the model (its prompt overflowed"
            + (f"; the smallest positive depth is {float(sparse_depth[sparse_depth > 0].min()):.3g}" if eager else "")
            + "): are the depths metres, with 0 for missing samples?"))
        return tokens, median

    def decode_raw(self, feats, coords, backend, chunk, with_grad=False):
        if feats.disparity_scale is None:
            raise ValueError("these features carry no depth-prompt scale: they come from another model's encode; "
                             "decode them with that model, or encode with this one (and sparse_depth)")
        scale = feats.disparity_scale.view(-1, 1)  # the released "unwarp" (floored in _prompt)
        if not with_grad:
            return super().decode_raw(feats, coords, backend, chunk) * scale
        value, grad = super().decode_raw(feats, coords, backend, chunk, with_grad=True)
        return value * scale, grad * scale[..., None]


def median_of(x: torch.Tensor) -> torch.Tensor:
    """The median of a 1-D tensor, halfway between the two middle values for an even count (as
    ``torch.quantile(x, 0.5)``, which refuses more than 2**24 values: a dense 4096x4096 sensor map)."""
    v = x.sort().values
    n = v.shape[0]
    return (v[(n - 1) // 2] + v[n // 2]) / 2


def check_sparse_depth(sparse_depth: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    if not isinstance(sparse_depth, torch.Tensor):
        raise TypeError(f"sparse_depth must be a tensor [B, 1, H, W], got {type(sparse_depth).__name__}")
    B, _, H, W = image.shape
    if tuple(sparse_depth.shape) != (B, 1, H, W):
        raise ValueError(f"sparse_depth must have shape {(B, 1, H, W)} (the image's), got {tuple(sparse_depth.shape)}")
    if not sparse_depth.is_floating_point():
        hint = " (a 16-bit depth PNG holds millimetres: divide by 1000)" if sparse_depth.dtype == torch.uint16 else ""
        raise TypeError(f"sparse_depth must be a float tensor of metric depth in metres, got {sparse_depth.dtype}{hint}")
    # checked as the model will see it: in float32, where 1e300 is infinite and 1e-40 has no reciprocal
    sparse_depth = sparse_depth.float()
    require(~torch.isnan(sparse_depth).any(), "sparse_depth contains NaN; mark missing samples with 0")
    require(~(sparse_depth < 0).any(), "sparse_depth contains negative depth; mark missing samples with 0")
    require(~torch.isinf(sparse_depth).any(), "sparse_depth contains infinite depth (in float32); mark missing samples with 0")
    require(~((sparse_depth > 0) & (sparse_depth < 1e-30)).any(),
            "sparse_depth contains positive depths below 1e-30 (not metres); mark missing samples with 0")
    return sparse_depth
