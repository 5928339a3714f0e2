"""Ops of infinidepth: dispatch to backends, and the plain-PyTorch references the tests trust."""

from .coords import grid_coords, normalized_to_pixel, pixel_centers, pixel_to_normalized
from .gather import available_backends, bilinear_gather, bilinear_gather_reference, resolve_backend
from .implicit_decode import PRECISIONS, ConcatDecoder, HierarchicalDecoder, implicit_decode
from .inverse_cdf import inverse_cdf_sample

__all__ = [
    "ConcatDecoder",
    "HierarchicalDecoder",
    "available_backends",
    "bilinear_gather",
    "bilinear_gather_reference",
    "grid_coords",
    "implicit_decode",
    "inverse_cdf_sample",
    "normalized_to_pixel",
    "pixel_centers",
    "pixel_to_normalized",
    "resolve_backend",
]
