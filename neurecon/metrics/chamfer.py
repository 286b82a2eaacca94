"""Chamfer distance between a mesh and ground-truth points, in world units."""

from __future__ import annotations

import numpy as np
import trimesh
from scipy.spatial import cKDTree


def sample_surface(mesh: trimesh.Trimesh, n: int, seed: int = 0) -> np.ndarray:
    """(n, 3) points uniformly on the mesh surface (area-weighted), reproducible by ``seed``."""
    pts, _ = trimesh.sample.sample_surface(mesh, n, seed=seed)
    return np.asarray(pts, dtype=np.float64)


def chamfer(pred: np.ndarray, gt: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy (pred → gt), completeness (gt → pred), their mean, and F-score at ``threshold``.

    Shapes: pred (N, 3), gt (M, 3), same units.
    """
    d_acc, _ = cKDTree(gt).query(pred, workers=-1)
    d_comp, _ = cKDTree(pred).query(gt, workers=-1)
    precision = float((d_acc < threshold).mean())
    recall = float((d_comp < threshold).mean())
    f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "accuracy": float(d_acc.mean()),
        "completeness": float(d_comp.mean()),
        "mean": float(0.5 * (d_acc.mean() + d_comp.mean())),
        "precision": precision,
        "recall": recall,
        "fscore": f,
        "threshold": float(threshold),
    }
