"""Data: procedural scenes with exact depth at any resolution, readers for the training sets' file
layouts, augmentation and sub-pixel depth supervision.

    from infinidepth.data import Hypersim, Augment, collate
    ds = Hypersim("/data/hypersim", size=(384, 512), n_pairs=100_000, augment=Augment())
    loader = torch.utils.data.DataLoader(ds, batch_size=8, collate_fn=collate, num_workers=8)
"""

from .datasets import (
    DATASETS,
    IRS,
    DataError,
    DepthDataset,
    Hypersim,
    ProceduralFiles,
    ProceduralScenes,
    TartanAir,
    UnrealStereo4K,
    UrbanSyn,
    VirtualKITTI2,
)
from .procedural import Render, Scene, generate_scene, render, render_set
from .transforms import Augment, clean_depth, collate, prepare, sample_depth_pairs

__all__ = [
    "DATASETS", "IRS", "Augment", "DataError", "DepthDataset", "Hypersim", "ProceduralFiles", "ProceduralScenes",
    "Render", "Scene", "TartanAir", "UnrealStereo4K", "UrbanSyn", "VirtualKITTI2", "clean_depth", "collate",
    "generate_scene", "prepare", "render", "render_set", "sample_depth_pairs",
]
