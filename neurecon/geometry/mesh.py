"""Mesh extraction from a field's signed geometry function, in WORLD coordinates.

Block-wise marching cubes: the ``resolution³`` grid over ``[-bound, bound]³`` is cut into blocks
of ``block³`` grid points that share one layer of points with their neighbours. Each block is
evaluated, clipped and marched on its own, so memory is bounded by the block, not the
resolution. A vertex lies on one grid edge, and two blocks sharing a face compute the same
vertex on a shared edge from the same two values: vertices are merged by their edge's global
index, so the stitched mesh has no cracks and no duplicates — the same mesh as one dense pass.
Blocks the surface cannot reach are skipped (outside the unit-sphere clip; for SDFs, blocks
whose centre is farther from the surface than ``skip_margin`` half-diagonals).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import mcubes
import numpy as np
import torch
import trimesh
from torch import Tensor
from tqdm.auto import tqdm

from neurecon.errors import MeshExtractionError


@torch.no_grad()
def sample_grid(
    fn: Callable[[Tensor], Tensor],
    resolution: int,
    bound: float = 1.0,
    chunk: int = 65536,
    device: str | torch.device = "cpu",
    index: tuple[slice, slice, slice] | None = None,
) -> np.ndarray:
    """``fn`` on the ``resolution³`` grid over ``[-bound, bound]³`` (or the sub-block ``index``
    of it), in chunks. Returns (X, Y, Z) float32, indexed [x, y, z]."""
    g = torch.linspace(-bound, bound, resolution, device=device)
    axes = [g[s] for s in (index or (slice(None),) * 3)]
    nx, ny, nz = (len(a) for a in axes)
    out = np.empty(nx * ny * nz, dtype=np.float32)
    # Build coordinates per chunk from the flat index so no (N, 3) tensor is ever allocated.
    for start in range(0, len(out), chunk):
        idx = torch.arange(start, min(start + chunk, len(out)), device=device)
        ix, iy, iz = idx // (ny * nz), (idx // nz) % ny, idx % nz
        pts = torch.stack([axes[0][ix], axes[1][iy], axes[2][iz]], dim=-1)
        out[start : start + len(idx)] = fn(pts).float().cpu().numpy()
    return out.reshape(nx, ny, nz)


def _sphere_clip(vol: np.ndarray, g: np.ndarray, index: tuple[slice, ...]) -> np.ndarray:
    """``max(vol, |x| − 1)``: nothing outside the unit sphere, which the cameras constrain."""
    gx, gy, gz = (g[s] for s in index)
    r = np.sqrt(gx[:, None, None] ** 2 + gy[None, :, None] ** 2 + gz[None, None, :] ** 2)
    return np.maximum(vol, r - 1.0)


def _edge_keys(verts: np.ndarray, resolution: int) -> np.ndarray:
    """A unique int64 per grid edge (or grid point) that a vertex (global index coords) lies on.

    Two of a marching-cubes vertex's coordinates are integers and the third is the position
    along its edge; blocks compute the same vertex with rounding differences of a few ulps.
    """
    rounded = np.round(verts)
    frac = np.abs(verts - rounded)
    axis = np.where(frac.max(1) < 1e-6, 3, frac.argmax(1))  # 3: exactly on a grid point
    base = rounded.astype(np.int64)
    on_edge = axis < 3
    rows = np.nonzero(on_edge)[0]
    base[rows, axis[on_edge]] = np.floor(verts[rows, axis[on_edge]]).astype(np.int64)
    R = np.int64(resolution)
    return ((axis.astype(np.int64) * R + base[:, 0]) * R + base[:, 1]) * R + base[:, 2]


def merge_block_vertices(
    verts: np.ndarray, faces: np.ndarray, resolution: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge the copies of a vertex that neighbouring blocks both made (see :func:`_edge_keys`).
    Shapes: verts (V, 3) global index coordinates, faces (F, 3) → merged (V', 3), (F', 3)."""
    _, first, inverse = np.unique(
        _edge_keys(verts, resolution), return_index=True, return_inverse=True
    )
    faces = inverse.reshape(-1)[faces]
    ok = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    return verts[first], faces[ok]


def extract_mesh(
    fn: Callable[[Tensor], Tensor],
    to_world: np.ndarray,
    resolution: int = 128,
    bound: float = 1.0,
    clip_to_sphere: bool = True,
    chunk: int = 65536,
    device: str | torch.device = "cpu",
    block: int = 128,
    skip_margin: float | None = None,
    progress: bool = False,
) -> trimesh.Trimesh:
    """Marching cubes of the zero level set of ``fn`` (negative inside), mapped to world.

    Args:
        fn: (N, 3) normalised-frame points → (N,) signed value.
        to_world: (4, 4) normalised → world transform (the dataset's ``scale_mat``).
        clip_to_sphere: intersect with the unit sphere, the region the cameras constrain. The
            faces the clip itself makes (a cap where the field is still negative at the
            sphere: space no camera constrains) are dropped: they are not the field's surface.
        block: grid points per block side (memory: ``block³`` values at a time).
        skip_margin: for signed *distance* functions only: skip a block when ``|fn|`` at its
            centre exceeds this many half-diagonals (the surface cannot be inside; 2 allows a
            gradient norm up to 2). None: evaluate every block inside the clip.
    """
    if resolution < 8:
        raise MeshExtractionError(f"mesh resolution must be >= 8, got {resolution}")
    if block < 2:
        raise MeshExtractionError(f"mesh block must be >= 2 grid points, got {block}")
    R, step = resolution, block - 1
    g = np.linspace(-bound, bound, R, dtype=np.float32)
    spacing = 2.0 * bound / (R - 1)
    starts = list(range(0, R - 1, step))
    blocks = [
        tuple(slice(s, min(s + block, R)) for s in corner)
        for corner in itertools.product(starts, repeat=3)
    ]
    if clip_to_sphere:  # exact: a block whose nearest point is outside the sphere has no surface
        blocks = [b for b in blocks if _nearest_norm(g, b) <= 1.0]
    if skip_margin is not None and blocks:
        blocks = _near_surface(fn, g, blocks, spacing, skip_margin, device)
    parts_v, parts_f, n_verts = [], [], 0
    lo, hi = np.inf, -np.inf
    for b in tqdm(blocks, disable=not progress, desc="mesh blocks", leave=False):
        if skip_margin is None:
            vol = sample_grid(fn, R, bound, chunk, device, b)
        else:
            vol = sample_near_surface(fn, g, b, spacing, skip_margin, chunk, device)
        if clip_to_sphere:
            vol = _sphere_clip(vol, g, b)
        if not np.all(np.isfinite(vol)):
            raise MeshExtractionError(
                "the field is non-finite on the mesh grid (training diverged?)"
            )
        lo, hi = min(lo, float(vol.min())), max(hi, float(vol.max()))
        if vol.min() > 0 or vol.max() < 0:
            continue
        v, f = mcubes.marching_cubes(-vol, 0.0)  # -vol: outward-facing triangles
        if len(f):
            parts_v.append(v + np.array([s.start for s in b], dtype=np.float64))
            parts_f.append(f.astype(np.int64) + n_verts)
            n_verts += len(v)
    if not parts_f:
        seen = (
            f"values on the grid range over [{lo:.4g}, {hi:.4g}]"
            if np.isfinite(lo)
            else "every block is farther from zero than its size, by the SDF's values"
        )
        raise MeshExtractionError(
            f"the field has no surface ({seen}: no zero crossing); train longer or check the "
            "run's losses"
        )
    verts, faces = np.concatenate(parts_v), np.concatenate(parts_f)
    if len(parts_f) > 1:
        verts, faces = merge_block_vertices(verts, faces, R)
    verts = verts * spacing - bound
    if clip_to_sphere:
        verts, faces = drop_clip_faces(verts, faces, spacing)
        if not len(faces):
            raise MeshExtractionError(
                "the field has no surface inside the unit sphere (only the sphere clip itself: "
                "the field is negative all the way out); train longer or check the run's losses"
            )
    verts = verts @ to_world[:3, :3].T + to_world[:3, 3]
    return trimesh.Trimesh(verts, faces, process=False)


def drop_clip_faces(
    verts: np.ndarray, faces: np.ndarray, spacing: float
) -> tuple[np.ndarray, np.ndarray]:
    """Remove the faces whose three vertices lie on the unit sphere (normalised frame): there
    the clip ``|x| − 1``, not the field, made the zero crossing. A vertex on a grid edge where
    the clip crosses zero lies within a tiny fraction of a voxel of the sphere (the chord's
    sagitta), so ``0.1 · spacing`` separates the clip's vertices from the field's.
    Shapes: verts (V, 3), faces (F, 3) → (V', 3), (F', 3)."""
    on_clip = np.abs(np.linalg.norm(verts, axis=1) - 1.0) < 0.1 * spacing
    keep = ~on_clip[faces].all(axis=1)
    if keep.all():
        return verts, faces
    faces = faces[keep]
    used = np.unique(faces)
    remap = np.full(len(verts), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return verts[used], remap[faces]


@torch.no_grad()
def sample_near_surface(
    fn,
    g: np.ndarray,
    b: tuple[slice, ...],
    spacing: float,
    margin: float,
    chunk: int,
    device,
    cell: int = 16,
) -> np.ndarray:
    """A block of an SDF's grid, evaluated only in the cells of ``cell³`` points that the
    surface may reach; elsewhere each point gets its cell centre's value.

    Exact for marching cubes: a skipped cell's centre value exceeds ``margin`` half-diagonals,
    so (for a gradient norm below about ``margin − 1/8``) every point of the cell, and its
    neighbours one grid step away, have that value's sign — no grid edge touching it crosses
    zero, and only signs matter on edges that do not.
    """
    axes = [g[s] for s in b]
    shape = tuple(len(a) for a in axes)
    vol = np.empty(shape, np.float32)
    # Cells: runs of ``cell`` points along each axis (the last may be shorter).
    cuts = [list(range(0, n, cell)) for n in shape]
    cells = list(itertools.product(*[range(len(c)) for c in cuts]))
    lo = np.array([[cuts[k][i[k]] for k in range(3)] for i in cells])
    hi = np.array([[min(cuts[k][i[k]] + cell, shape[k]) - 1 for k in range(3)] for i in cells])
    centre = np.stack([0.5 * (axes[k][lo[:, k]] + axes[k][hi[:, k]]) for k in range(3)], 1)
    half_diag = 0.5 * spacing * np.linalg.norm(hi - lo, axis=1)
    c_val = fn(torch.tensor(centre, dtype=torch.float32, device=device)).float().cpu().numpy()
    near = np.abs(c_val) <= margin * half_diag
    pts = []
    for (x0, y0, z0), (x1, y1, z1), v, is_near in zip(lo, hi, c_val, near, strict=True):
        if is_near:
            pts.append(np.stack(np.meshgrid(
                np.arange(x0, x1 + 1), np.arange(y0, y1 + 1), np.arange(z0, z1 + 1),
                indexing="ij"), -1).reshape(-1, 3))  # fmt: skip
        else:
            vol[x0 : x1 + 1, y0 : y1 + 1, z0 : z1 + 1] = v
    if pts:
        idx = np.concatenate(pts)
        # The same coordinates as sample_grid's (torch's linspace, not numpy's).
        full = torch.linspace(float(g[0]), float(g[-1]), len(g), device=device)
        gt = [full[s] for s in b]
        for s in range(0, len(idx), chunk):
            i = torch.as_tensor(idx[s : s + chunk], device=device)
            x = torch.stack([gt[0][i[:, 0]], gt[1][i[:, 1]], gt[2][i[:, 2]]], -1)
            vol[tuple(idx[s : s + chunk].T)] = fn(x).float().cpu().numpy()
    return vol


def _nearest_norm(g: np.ndarray, b: tuple[slice, ...]) -> float:
    """Distance from the origin to the nearest grid point of block ``b``."""
    near = [0.0 if a[0] <= 0 <= a[-1] else min(abs(a[0]), abs(a[-1])) for a in (g[s] for s in b)]
    return float(np.linalg.norm(near))


@torch.no_grad()
def _near_surface(fn, g, blocks, spacing: float, margin: float, device) -> list:
    """The blocks whose centre is within ``margin`` half-diagonals of the zero level set."""
    centres = np.array([[0.5 * (g[s.start] + g[s.stop - 1]) for s in b] for b in blocks])
    half_diag = np.array([0.5 * spacing * np.sqrt(sum((s.stop - s.start - 1) ** 2 for s in b))
                          for b in blocks])  # fmt: skip
    x = torch.tensor(centres, dtype=torch.float32, device=device)
    d = fn(x).float().abs().cpu().numpy()
    return [b for b, di, h in zip(blocks, d, half_diag, strict=True) if di <= margin * h]
