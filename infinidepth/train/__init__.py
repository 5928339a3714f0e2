"""Training: ``infinidepth train --config FILE`` or ``torchrun --nproc_per_node=K -m infinidepth.train --config FILE``."""

from .config import PRESETS, DataSource, TrainConfig, load_config
from .trainer import TrainingDiverged, make_targets, save_checkpoint, train

__all__ = ["PRESETS", "DataSource", "TrainConfig", "load_config", "make_targets", "save_checkpoint", "train",
           "TrainingDiverged"]
