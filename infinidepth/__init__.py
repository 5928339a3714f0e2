"""infinidepth: monocular depth as a neural implicit field, queried at any resolution.

    model = infinidepth.load_model("checkpoint.ckpt", device="cuda")
    depth = model.predict(image, output_size=(4320, 7680))   # image: [B, 3, H, W] in [0, 1]
"""

from .checkpoint import CheckpointError, load_model, save_model
from .models import Features, ImplicitDepthModel, from_preset

__version__ = "0.1.0"

__all__ = ["CheckpointError", "Features", "ImplicitDepthModel", "from_preset", "load_model", "save_model"]
