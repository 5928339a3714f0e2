"""Gaussian splatting on the sampled points: Gaussians, the 3DGS PLY, rendering (gsplat on a GPU, a
C++ rasteriser on the CPU, the plain-PyTorch reference anywhere), splats from surface points, the
Gaussian heads, camera paths, novel-view metrics."""

from .gaussians import Gaussians, read_ply, write_ply
from .heads import PixelAlignedHead, PointHead
from .metrics import hole_fraction, psnr, ssim
from .render import render, render_cpp, render_gsplat, render_torch
from .splats import camera_path, splats_from_points

__all__ = ["Gaussians", "PixelAlignedHead", "PointHead", "camera_path", "hole_fraction", "psnr", "ssim", "read_ply", "render", "render_cpp", "render_gsplat", "render_torch", "splats_from_points", "write_ply"]
