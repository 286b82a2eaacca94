"""Depth against sparse structure-from-motion points: the geometry reference a real scan
without a scanned ground truth still has (Geo-NeuS's own check of its SDF on the SfM points)."""

from __future__ import annotations

import numpy as np


def surface_depth(depth: np.ndarray, opacity: np.ndarray, min_opacity: float = 0.5) -> np.ndarray:
    """(H, W) distance along each pixel's unit ray to the rendered surface: the expected depth
    ``Σ w·t`` normalised by the opacity ``Σ w`` (a render's ``depth`` and ``opacity``), NaN
    where the opacity is below ``min_opacity`` (no surface there to compare)."""
    out = depth / np.maximum(opacity, 1e-6)
    return np.where(opacity >= min_opacity, out, np.nan).astype(np.float32)


def sfm_depth_errors(
    depth: np.ndarray,
    K: np.ndarray,
    c2w: np.ndarray,
    points: np.ndarray,
    mask: np.ndarray | None = None,
    occlusion: float | None = None,
) -> np.ndarray:
    """|rendered surface distance − the point's distance| for each sparse point that projects
    into the view, in the frame of ``c2w`` (multiply by the frame's scale for world units).

    Args:
        depth: (H, W) distance along the unit ray through each pixel centre to the rendered
            surface (:func:`surface_depth`; NaN: no surface).
        K: (3, 3) intrinsics (pixel centres at integers, as :func:`~neurecon.data.cameras.
            pixel_rays`).  c2w: (4, 4) camera to frame.
        points: (N, 3) points in the same frame.
        mask: (H, W) bool pixels to score (the object's mask), or None for all.
        occlusion: a point whose rendered surface lies more than this in front of it is
            hidden in this view and left out (None: every point counts). The triangulated
            points carry no visibility, and the points on the far side of the object project
            into the view too; a render that misses the surface (too far, or a hole) always
            counts.
    Returns:
        (M,) the errors of the M points in front of the camera whose nearest pixel is inside
        the image, in the mask, on a surface and not hidden.
    """
    H, W = depth.shape
    R, o = c2w[:3, :3], c2w[:3, 3]
    cam = (points - o) @ R  # (N, 3) camera coordinates: R^T (p - o)
    front = cam[:, 2] > 1e-6
    cam = cam[front]
    dist = np.linalg.norm(points[front] - o, axis=1)
    uvw = cam @ K.T
    u = np.rint(uvw[:, 0] / uvw[:, 2]).astype(np.int64)
    v = np.rint(uvw[:, 1] / uvw[:, 2]).astype(np.int64)
    inside = (u >= 0) & (u < W) & (v >= 0) & (v < H)
    u, v, dist = u[inside], v[inside], dist[inside]
    if mask is not None:
        keep = mask[v, u]
        u, v, dist = u[keep], v[keep], dist[keep]
    diff = depth[v, u] - dist
    ok = np.isfinite(diff)
    if occlusion is not None:
        ok &= diff >= -occlusion
    return np.abs(diff[ok])


def frame_scale(to_world: np.ndarray) -> float:
    """World units per unit of the normalised frame: the cube root of the linear part's
    determinant (NeuS's ``scale_mat`` is a uniform scale, DTU's world is in mm)."""
    return float(abs(np.linalg.det(np.asarray(to_world, dtype=np.float64)[:3, :3])) ** (1 / 3))
