"""Writes tests/data/dinov2_tiny.safetensors: tiny DINOv2 backbones with random weights and what
DINOv2's own code computes from them, the oracle of tests/test_train.py's DINOv2 loading test.

Needs a checkout of https://github.com/facebookresearch/dinov2 (not a dependency of infinidepth):

    XFORMERS_DISABLED=1 python tests/data/make_dinov2_fixture.py /path/to/dinov2

Two backbones, built the way DINOv2's hub builds its models (patch 14, LayerScale, a 3x3 position
grid here): ``plain`` (no registers; position grid resized by a scale factor of (n + 0.1) / 3) and
``reg4`` (4 registers; resized to the exact size with antialiasing). For each input size S the file
holds ``input_S`` [1, 3, H, W] (uint8; the network gets it divided by 255) and ``<backbone>/out_S`` [2, 1, h*w, 16]: the normalised patch tokens
of blocks 0 and 1 (``get_intermediate_layers(x, n=[0, 1], norm=True)``).
"""

import sys

import torch
from safetensors.torch import save_file

SIZES = [(42, 42), (56, 84), (28, 70)]  # the grid's own size (no resize), larger, smaller and oblong


def main(dinov2_root: str) -> None:
    sys.path.insert(0, dinov2_root)
    from dinov2.models.vision_transformer import DinoVisionTransformer

    g = torch.Generator().manual_seed(0)
    tensors = {}
    for S in SIZES:
        tensors[f"input_{S[0]}x{S[1]}"] = torch.randint(0, 256, (1, 3, *S), generator=g, dtype=torch.uint8)
    for name, registers, antialias, offset in [("plain", 0, False, 0.1), ("reg4", 4, True, 0.0)]:
        net = DinoVisionTransformer(img_size=42, patch_size=14, embed_dim=16, depth=2, num_heads=2, init_values=1.0,
                                    block_chunks=0, num_register_tokens=registers, interpolate_antialias=antialias,
                                    interpolate_offset=offset).eval()
        with torch.no_grad():
            for key, p in net.named_parameters():  # every weight away from its init, so each one matters
                p.copy_(torch.rand(p.shape, generator=g) + 0.5 if key.endswith("gamma") else
                        torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 0.2))
            for key, value in net.state_dict().items():
                tensors[f"{name}/{key}"] = value.clone().contiguous()
            for S in SIZES:
                image = tensors[f"input_{S[0]}x{S[1]}"].float() / 255
                out = net.get_intermediate_layers(image, n=[0, 1], norm=True)
                tensors[f"{name}/out_{S[0]}x{S[1]}"] = torch.stack(out).contiguous()
    save_file(tensors, "tests/data/dinov2_tiny.safetensors", metadata={"made_by": "tests/data/make_dinov2_fixture.py"})


if __name__ == "__main__":
    main(sys.argv[1])
