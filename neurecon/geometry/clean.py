"""Mesh cleaning: connected components and culling by what the training cameras saw."""

from __future__ import annotations

import numpy as np
import trimesh


def keep_largest(mesh: trimesh.Trimesh, min_fraction: float | None = None) -> trimesh.Trimesh:
    """The largest connected component (``min_fraction`` None), or every component with at
    least ``min_fraction`` of the largest one's faces. Floaters go; colours are kept."""
    labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, len(mesh.faces))
    if len(labels) == 0:
        return mesh
    sizes = np.bincount(labels)
    if min_fraction is None:
        keep = labels == sizes.argmax()
    else:
        keep = sizes[labels] >= min_fraction * sizes.max()
    return submesh(mesh, keep)


def clean_by_hull(
    mesh: trimesh.Trimesh, outside: np.ndarray, min_fraction: float | None
) -> trimesh.Trimesh:
    """The faces whose three vertices are inside the visual hull (``outside`` (V,) bool per
    vertex, :class:`~neurecon.geometry.hull.VisualHull`), then :func:`keep_largest` with
    ``min_fraction``. Colours are kept."""
    kept = submesh(mesh, ~np.asarray(outside, bool)[mesh.faces].any(axis=1))
    return keep_largest(kept, min_fraction) if len(kept.faces) else kept


def submesh(mesh: trimesh.Trimesh, face_keep: np.ndarray) -> trimesh.Trimesh:
    """The faces ``face_keep`` (F,) bool, unreferenced vertices dropped, vertex colours kept."""
    faces = np.asarray(mesh.faces)[face_keep]
    used = np.unique(faces)
    remap = np.full(len(mesh.vertices), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    colors = None
    if mesh.visual.kind == "vertex":
        colors = np.asarray(mesh.visual.vertex_colors)[used]
    return trimesh.Trimesh(
        np.asarray(mesh.vertices)[used], remap[faces], vertex_colors=colors, process=False
    )


def seen_faces(
    mesh: trimesh.Trimesh, world_mats: np.ndarray, sizes: np.ndarray, min_views: int = 1
) -> np.ndarray:
    """(F,) bool: faces whose centroid projects into at least ``min_views`` training images,
    in front of the camera. Occlusion is not tested (a face hidden behind another still counts
    as seen): this culls what lies outside every camera's frustum, such as the sphere clip's
    far side on forward-facing captures.

    Args:
        world_mats: (V, 3, 4) world → pixel projections.  sizes: (V, 2) image (H, W).
    """
    c = np.c_[mesh.triangles_center, np.ones(len(mesh.faces))]
    count = np.zeros(len(c), dtype=np.int64)
    for P, (H, W) in zip(world_mats, sizes, strict=True):
        p = c @ np.asarray(P)[:3].T
        z = p[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u, v = p[:, 0] / z, p[:, 1] / z
        count += (z > 0) & (u >= -0.5) & (u < W - 0.5) & (v >= -0.5) & (v < H - 0.5)
    return count >= min_views
