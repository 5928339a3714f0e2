"""Evaluation: depth metrics, alignment, high-frequency masks, benchmark readers, and the loop.

    from infinidepth.eval import BENCHMARKS, evaluate, format_table
    result = evaluate(model, BENCHMARKS["nyuv2"]("/data/nyu"), output_resolution="native")
    print(format_table(result))
"""

from .benchmarks import BENCHMARKS, DIODE, ETH3D, KITTI, Benchmark, NYUv2, Procedural, ScanNet, Synth4K
from .evaluate import evaluate, format_table, predict_depth
from .hf_mask import high_frequency_map, high_frequency_mask
from .metrics import METRICS, THRESHOLDS, align, clip_depth, depth_metrics

__all__ = [
    "BENCHMARKS", "DIODE", "ETH3D", "KITTI", "METRICS", "THRESHOLDS", "Benchmark", "NYUv2", "Procedural", "ScanNet",
    "Synth4K", "align", "clip_depth", "depth_metrics", "evaluate", "format_table", "high_frequency_map",
    "high_frequency_mask", "predict_depth",
]
