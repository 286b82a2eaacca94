"""Image metrics on (H, W, 3) float arrays in [0, 1]."""

from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity


def psnr(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio (data range 1); with ``mask`` (H, W), over masked pixels only."""
    err = (np.asarray(pred, np.float64) - np.asarray(gt, np.float64)) ** 2
    mse = err[mask].mean() if mask is not None else err.mean()
    return float(10 * np.log10(1.0 / max(mse, 1e-20)))


def ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    """SSIM with the settings of NeRF papers: 11×11 Gaussian window, σ = 1.5, data range 1."""
    return float(
        structural_similarity(
            np.asarray(pred, np.float64),
            np.asarray(gt, np.float64),
            data_range=1.0,
            channel_axis=-1,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
    )
