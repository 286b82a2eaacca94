"""Camera conventions, projection-matrix decomposition and ray generation.

Conventions (OpenCV): camera looks down +z, x right, y down; the centre of pixel column ``u`` is at
image coordinate ``u`` (no half-pixel offset), as in the intrinsics that DTU / NeuS ship.
``c2w`` is a 4×4 camera-to-world matrix in the *normalised* scene frame, where the region of
interest is the unit sphere; ``to_world`` maps that frame back to the dataset's world frame.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from neurecon.errors import DatasetError


class CameraError(ValueError):
    """A camera matrix that cannot be used (singular, non-finite, wrong shape)."""


def decompose_projection(P: np.ndarray, name: str = "projection") -> tuple[np.ndarray, np.ndarray]:
    """Split a 3×4 projection ``P = K [R | t]`` into intrinsics and camera-to-world.

    Args:
        P: (3, 4) or (4, 4) projection matrix (only the top 3 rows are used).
        name: what to call the matrix in error messages (file and key).
    Returns:
        K: (3, 3) upper-triangular intrinsics with positive focal lengths, ``K[2, 2] == 1``.
        c2w: (4, 4) camera-to-world with a proper rotation (det = +1).
    """
    P = np.asarray(P, dtype=np.float64)
    if P.shape not in ((3, 4), (4, 4)):
        raise CameraError(f"{name}: expected a 3x4 or 4x4 matrix, got shape {P.shape}")
    P = P[:3, :4]
    if not np.all(np.isfinite(P)):
        raise CameraError(f"{name}: matrix has non-finite values")
    M = P[:, :3]
    if abs(np.linalg.det(M)) < 1e-12 * max(1.0, np.abs(M).max() ** 3):
        raise CameraError(f"{name}: the 3x3 part of the projection matrix is singular")
    K, R = scipy.linalg.rq(M)
    # RQ is unique up to the signs of K's diagonal: make them positive.
    S = np.diag(np.sign(np.diag(K)))
    K, R = K @ S, S @ R
    if np.linalg.det(R) < 0:  # P given up to scale -1; flip both to keep a rotation
        R, K = -R, -K
        K = K @ np.diag(np.sign(np.diag(K)))
    centre = -np.linalg.solve(M, P[:, 3])
    K = K / K[2, 2]
    c2w = np.eye(4)
    c2w[:3, :3] = R.T
    c2w[:3, 3] = centre
    return K, c2w


def compose_projection(K: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """Inverse of :func:`decompose_projection`: a 4×4 ``world_mat`` (NeuS format) from K and c2w."""
    P = np.eye(4)
    P[:3, :3] = K
    return P @ np.linalg.inv(c2w)


def look_at(eye: np.ndarray, target: np.ndarray, up: tuple[float, ...] = (0.0, 0.0, 1.0)):
    """OpenCV camera-to-world (4×4) at ``eye`` looking at ``target``."""
    fwd = target - eye
    fwd = fwd / np.linalg.norm(fwd)
    right = np.cross(fwd, np.asarray(up, dtype=np.float64))
    if np.linalg.norm(right) < 1e-8:  # looking along up: pick any perpendicular
        right = np.cross(fwd, np.array([1.0, 0.0, 0.0]))
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, fwd, eye
    return c2w


def pixel_rays(K: Tensor, c2w: Tensor, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Rays through pixel coordinates.

    Args:
        K: (B, 3, 3) or (3, 3) intrinsics.  c2w: (B, 4, 4) or (4, 4).
        u, v: (B,) column / row coordinates (float, pixel centres at integers).
    Returns:
        origins (B, 3), unit directions (B, 3), in the frame of ``c2w``.
    """
    if K.dim() == 2:
        K = K.expand(u.shape[0], 3, 3)
        c2w = c2w.expand(u.shape[0], 4, 4)
    x = (u - K[:, 0, 2] - K[:, 0, 1] * (v - K[:, 1, 2]) / K[:, 1, 1]) / K[:, 0, 0]
    y = (v - K[:, 1, 2]) / K[:, 1, 1]
    d_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)
    d = torch.einsum("bij,bj->bi", c2w[:, :3, :3], d_cam)
    d = d / d.norm(dim=-1, keepdim=True)
    return c2w[:, :3, 3].clone(), d


def sphere_near_far(
    origins: Tensor, dirs: Tensor, radius: float = 1.0, min_near: float = 0.0
) -> tuple[Tensor, Tensor, Tensor]:
    """Clip unit-direction rays to a sphere at the origin.

    Returns:
        near (B,), far (B,), hit (B,) bool. Missed rays get ``near == far``.
    """
    b = (origins * dirs).sum(-1)
    c = (origins * origins).sum(-1) - radius**2
    disc = b * b - c
    hit = disc > 0
    sq = disc.clamp_min(0).sqrt()
    near = (-b - sq).clamp_min(min_near)
    far = (-b + sq).clamp_min(min_near)
    hit = hit & (far > near)
    far = torch.where(hit, far, near)
    return near, far, hit


def check_cameras(K: np.ndarray, c2w: np.ndarray, to_world: np.ndarray, where: str) -> None:
    """Refuse what no renderer can use: non-finite intrinsics K (V, 3, 3), poses c2w (V, 4, 4)
    or ``to_world`` (4, 4), and focal lengths that are not positive. ``where`` names the file."""
    K, c2w, to_world = (np.asarray(a, dtype=np.float64) for a in (K, c2w, to_world))
    for name, a in (("intrinsics", K), ("camera poses", c2w), ("scene transform", to_world)):
        with np.errstate(over="ignore"):  # finite in float32 too: scenes store float32
            a = a.astype(np.float32)
        if not np.all(np.isfinite(a)):
            bad = np.argwhere(~np.isfinite(a.reshape(len(a), -1)))[0, 0] if a.ndim == 3 else 0
            raise DatasetError(f"{where}: non-finite {name} (view {bad})")
    focal = np.stack([K[:, 0, 0], K[:, 1, 1]], 1)
    if not np.all(focal > 0):
        raise DatasetError(
            f"{where}: focal length <= 0 (view {int(np.argwhere(focal <= 0)[0, 0])})"
        )
