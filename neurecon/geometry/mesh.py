"""Mesh extraction from a field's signed geometry function, in WORLD coordinates."""

from __future__ import annotations

from collections.abc import Callable

import mcubes
import numpy as np
import torch
import trimesh
from torch import Tensor

from neurecon.errors import MeshExtractionError


@torch.no_grad()
def sample_grid(
    fn: Callable[[Tensor], Tensor],
    resolution: int,
    bound: float = 1.0,
    chunk: int = 65536,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """``fn`` on a ``resolution³`` grid over ``[-bound, bound]³``, in chunks (bounded memory).

    Returns (R, R, R) float32, indexed [x, y, z].
    """
    g = torch.linspace(-bound, bound, resolution, device=device)
    out = np.empty(resolution**3, dtype=np.float32)
    # Build coordinates per chunk from the flat index so no (R³, 3) tensor is ever allocated.
    for start in range(0, resolution**3, chunk):
        idx = torch.arange(start, min(start + chunk, resolution**3), device=device)
        ix, iy, iz = (
            idx // (resolution * resolution),
            (idx // resolution) % resolution,
            idx % resolution,
        )
        pts = torch.stack([g[ix], g[iy], g[iz]], dim=-1)
        out[start : start + len(idx)] = fn(pts).float().cpu().numpy()
    return out.reshape(resolution, resolution, resolution)


def extract_mesh(
    fn: Callable[[Tensor], Tensor],
    to_world: np.ndarray,
    resolution: int = 128,
    bound: float = 1.0,
    clip_to_sphere: bool = True,
    chunk: int = 65536,
    device: str | torch.device = "cpu",
) -> trimesh.Trimesh:
    """Marching cubes of the zero level set of ``fn`` (negative inside), mapped to world.

    Args:
        fn: (N, 3) normalised-frame points → (N,) signed value.
        to_world: (4, 4) normalised → world transform (the dataset's ``scale_mat``).
        clip_to_sphere: intersect with the unit sphere, the region the cameras constrain.
    """
    if resolution < 8:
        raise MeshExtractionError(f"mesh resolution must be >= 8, got {resolution}")
    vol = sample_grid(fn, resolution, bound, chunk, device)
    if clip_to_sphere:
        g = np.linspace(-bound, bound, resolution, dtype=np.float32)
        r = np.sqrt(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2)
        vol = np.maximum(vol, r - 1.0)
    if not np.all(np.isfinite(vol)):
        raise MeshExtractionError("the field is non-finite on the mesh grid (training diverged?)")
    if vol.min() > 0 or vol.max() < 0:
        raise MeshExtractionError(
            f"the field has no surface (values on the grid range over [{vol.min():.4g}, "
            f"{vol.max():.4g}], no zero crossing); train longer or check the run's losses"
        )
    verts, faces = mcubes.marching_cubes(-vol, 0.0)  # -vol: outward-facing triangles
    verts = verts / (resolution - 1) * (2 * bound) - bound
    verts = verts @ to_world[:3, :3].T + to_world[:3, 3]
    return trimesh.Trimesh(verts, faces, process=False)
