"""Metrics: plain functions used by train.py and evaluate.py."""

from neurecon.metrics.chamfer import chamfer, mesh_chamfer, point_mesh_distance, sample_surface
from neurecon.metrics.image import psnr, ssim

__all__ = ["chamfer", "mesh_chamfer", "point_mesh_distance", "psnr", "sample_surface", "ssim"]
