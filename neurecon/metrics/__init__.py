"""Metrics: plain functions used by train.py and evaluate.py."""

from neurecon.metrics.chamfer import chamfer, sample_surface
from neurecon.metrics.image import psnr, ssim

__all__ = ["chamfer", "psnr", "sample_surface", "ssim"]
