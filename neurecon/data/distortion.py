"""Lens distortion: resample distorted photos to pinhole cameras with the same intrinsics.

Undistortion here is a *resampling*: for every pixel of the pinhole output, the distortion
model (normalised → distorted normalised coordinates; no inversion needed) says where to read
the source photo. Output pixels whose source lies outside the photo have no data: they are
returned in a validity mask, which the scene uses to keep them out of the loss and the metrics
(painting them black would teach the field a black border).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.ndimage import map_coordinates

Distortion = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def opencv_distortion(
    k1: float = 0.0, k2: float = 0.0, p1: float = 0.0, p2: float = 0.0, k3: float = 0.0
) -> Distortion:
    """OpenCV's radial-tangential model (``cv2.projectPoints`` with 5 coefficients)."""

    def distort(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r2 = x * x + y * y
        radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
        xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        return xd, yd

    return distort


def fisheye_distortion(
    k1: float = 0.0, k2: float = 0.0, k3: float = 0.0, k4: float = 0.0
) -> Distortion:
    """OpenCV's fisheye (equidistant, Kannala-Brandt) model, ``cv2.fisheye``."""

    def distort(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = np.sqrt(x * x + y * y)
        theta = np.arctan(r)
        t2 = theta * theta
        theta_d = theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))
        scale = np.where(r > 1e-12, theta_d / np.maximum(r, 1e-12), 1.0)
        return x * scale, y * scale

    return distort


def remap(img: np.ndarray, src_u: np.ndarray, src_v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear resampling of ``img`` (H, W, C) uint8 at source pixel coordinates (h, w).

    Pixel centres are at integer coordinates. Returns the (h, w, C) uint8 image and the (h, w)
    bool mask of positions inside the source image (within half a pixel of its border).
    """
    H, W = img.shape[:2]
    valid = (src_u >= -0.5) & (src_u <= W - 0.5) & (src_v >= -0.5) & (src_v <= H - 0.5)
    coords = [src_v.ravel(), src_u.ravel()]
    out = np.empty((*src_u.shape, img.shape[2]), np.uint8)
    for c in range(img.shape[2]):
        chan = map_coordinates(img[..., c].astype(np.float32), coords, order=1, mode="nearest")
        out[..., c] = (chan.reshape(src_u.shape) + 0.5).clip(0, 255).astype(np.uint8)
    return out, valid


def undistort(img: np.ndarray, K: np.ndarray, distort: Distortion) -> tuple[np.ndarray, np.ndarray]:
    """Resample a distorted image (H, W, C) uint8 to the pinhole camera with intrinsics ``K``
    (3, 3; pixel centres at integers). Returns the image and its (H, W) validity mask."""
    H, W = img.shape[:2]
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    y = (v - K[1, 2]) / K[1, 1]
    x = (u - K[0, 2] - K[0, 1] * y) / K[0, 0]
    xd, yd = distort(x, y)
    return remap(img, K[0, 0] * xd + K[0, 1] * yd + K[0, 2], K[1, 1] * yd + K[1, 2])


def downscale_valid(valid: np.ndarray, factor: int) -> np.ndarray:
    """Downscale a (H, W) validity mask: an output pixel is valid when its whole block was."""
    from neurecon.data.io import downscale_image

    return downscale_image(valid.astype(np.uint8) * 255, factor) == 255
