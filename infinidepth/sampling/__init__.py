"""Where to query depth: the surface-area sampler, the released triangle-area sampler for
comparison, normals of the field, and measures of how evenly points cover the surfaces.

DESIGN.md section 3. The kernel at the core (stratified inverse-CDF placement) lives with the other
ops in ``infinidepth.ops.inverse_cdf``.
"""

from .camera import backproject, check_camera_to_world, check_intrinsics, check_size, rays, scale_intrinsics, to_world
from .normals import surface_normals
from .outliers import statistical_inliers
from .surface import surface_area_sample, surface_area_weights
from .triangle import triangle_area_sample
from .uniformity import hole_fraction, knn_spacing, uniformity

__all__ = [
    "backproject",
    "check_camera_to_world",
    "check_intrinsics",
    "check_size",
    "hole_fraction",
    "knn_spacing",
    "rays",
    "scale_intrinsics",
    "statistical_inliers",
    "surface_area_sample",
    "surface_area_weights",
    "surface_normals",
    "to_world",
    "triangle_area_sample",
    "uniformity",
]
