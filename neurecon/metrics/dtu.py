"""The DTU surface evaluation as used by NeuS / Neuralangelo papers.

It follows the widely used Python port of DTU's MATLAB evaluation (DTUeval-python):

1. the mesh is culled by the (dilated) object masks of all views (``cull_by_masks``),
2. points are sampled on its triangles at ``density`` mm and thinned so that no two are closer
   than ``density`` (greedy radius down-sampling),
3. accuracy: distances from those points that fall inside the observability mask
   ``ObsMask/ObsMask{scan}_10.mat`` to the STL ground truth ``Points/stl/stl{scan:03}_total.ply``,
4. completeness: distances from the STL points above the plane ``ObsMask/Plane{scan}.mat`` to
   the masked mesh points,
5. each mean only over distances below ``max_dist`` (20 mm); overall = (accuracy + completeness)/2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
import trimesh
from scipy.ndimage import binary_dilation
from scipy.spatial import cKDTree

from neurecon.errors import DatasetError


def cull_by_masks(
    mesh: trimesh.Trimesh,
    world_mats: np.ndarray,
    masks: np.ndarray,
    dilate: int = 12,
) -> trimesh.Trimesh:
    """Keep vertices that project inside the dilated mask of every view that sees them.

    A vertex outside a view's image (or behind it) is not judged by that view.
    Args:
        world_mats: (V, 3, 4) or (V, 4, 4) world → pixel projections (DTU ``world_mat``).
        masks: (V, H, W) bool object masks at the resolution the projections refer to (or a
            sequence of per-view (H_i, W_i) masks).
        dilate: mask dilation in pixels (a square structuring element).
    """
    verts = np.c_[mesh.vertices, np.ones(len(mesh.vertices))]
    keep = np.ones(len(verts), dtype=bool)
    struct = np.ones((dilate, dilate), bool) if dilate > 1 else None
    for P, m in zip(world_mats, masks, strict=True):
        H, W = m.shape
        m = binary_dilation(m, structure=struct) if struct is not None else m
        p = verts @ np.asarray(P)[:3].T
        z = p[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u, v = np.round(p[:, 0] / z).astype(np.int64), np.round(p[:, 1] / z).astype(np.int64)
        visible = (z > 0) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
        inside = np.zeros(len(verts), dtype=bool)
        inside[visible] = m[v[visible], u[visible]]
        keep &= inside | ~visible
    faces = mesh.faces[keep[mesh.faces].all(axis=1)]
    return trimesh.Trimesh(mesh.vertices, faces, process=False).copy()


def sample_triangles(mesh: trimesh.Trimesh, density: float) -> np.ndarray:
    """Vertices plus points on a barycentric lattice of each triangle, ~``density`` apart."""
    tri = mesh.vertices[mesh.faces]
    v1, v2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    l1, l2 = np.linalg.norm(v1, axis=-1), np.linalg.norm(v2, axis=-1)
    area2 = np.linalg.norm(np.cross(v1, v2), axis=-1)
    ok = area2 > 0
    tri, v1, v2, l1, l2, area2 = tri[ok], v1[ok], v2[ok], l1[ok], l2[ok], area2[ok]
    thr = density * np.sqrt(l1 * l2 / area2)
    n1, n2 = np.floor(l1 / thr).astype(np.int64), np.floor(l2 / thr).astype(np.int64)
    out = [np.asarray(mesh.vertices)]
    # Triangles with the same lattice size are sampled together (vectorised).
    for a, b in {(int(x), int(y)) for x, y in zip(n1, n2, strict=True)}:
        sel = (n1 == a) & (n2 == b)
        c = np.mgrid[: a + 1, : b + 1].reshape(2, -1).astype(np.float64) + 0.5
        c[0] /= max(a, 1e-7)
        c[1] /= max(b, 1e-7)
        k = c[:, c.sum(0) < 1]  # lattice points inside the triangle
        if k.shape[1] == 0:
            continue
        pts = (
            tri[sel, None, 0]
            + v1[sel, None] * k[0, None, :, None]
            + v2[sel, None] * k[1, None, :, None]
        )
        out.append(pts.reshape(-1, 3))
    return np.concatenate(out)


def radius_downsample(points: np.ndarray, radius: float, seed: int = 0) -> np.ndarray:
    """Greedy thinning in random order: keep a point, drop its neighbours within ``radius``."""
    pts = points[np.random.default_rng(seed).permutation(len(points))]
    tree = cKDTree(pts)
    keep = np.ones(len(pts), dtype=bool)
    for i, nbrs in enumerate(tree.query_ball_point(pts, radius, workers=-1)):
        if keep[i]:
            keep[nbrs] = False
            keep[i] = True
    return pts[keep]


def load_dtu_gt(gt_root: str | Path, scan: int) -> dict[str, np.ndarray]:
    """Read ObsMask, BB, Res, Plane and STL points of ``scan`` from the official layout."""
    root = Path(gt_root)
    files = {
        "obs": root / "ObsMask" / f"ObsMask{scan}_10.mat",
        "plane": root / "ObsMask" / f"Plane{scan}.mat",
        "stl": root / "Points" / "stl" / f"stl{scan:03}_total.ply",
    }
    for key, f in files.items():
        if not f.is_file():
            raise DatasetError(f"metrics.dtu_gt_root: DTU ground-truth file {f} is missing ({key})")
    obs = scipy.io.loadmat(files["obs"])
    stl = trimesh.load(files["stl"], process=False)
    return {
        "obs_mask": obs["ObsMask"].astype(bool),
        "bb": obs["BB"].astype(np.float64),
        "res": float(np.asarray(obs["Res"]).reshape(-1)[0]),
        "plane": scipy.io.loadmat(files["plane"])["P"].astype(np.float64).reshape(4),
        "stl": np.asarray(stl.vertices, dtype=np.float64),
    }


def dtu_chamfer(
    points: np.ndarray,
    gt: dict[str, np.ndarray],
    density: float = 0.2,
    max_dist: float = 20.0,
    patch: float = 60.0,
    seed: int = 0,
) -> dict[str, float]:
    """Accuracy / completeness / overall (mm) of sampled mesh ``points`` (N, 3), world frame."""
    data = radius_downsample(points, density, seed)
    bb, res, obs = gt["bb"], gt["res"], gt["obs_mask"]
    inbound = np.all((data >= bb[:1] - patch) & (data < bb[1:] + patch * 2), axis=-1)
    data_in = data[inbound]
    grid = np.around((data_in - bb[:1]) / res).astype(np.int64)
    ginb = np.all((grid >= 0) & (grid < np.array(obs.shape)), axis=-1)
    in_obs = obs[grid[ginb, 0], grid[ginb, 1], grid[ginb, 2]]
    data_obs = data_in[ginb][in_obs]
    if len(data_obs) == 0:
        raise DatasetError("DTU evaluation: no mesh point lies inside the observability mask")
    stl = gt["stl"]
    above = np.c_[stl, np.ones(len(stl))] @ gt["plane"] > 0
    d_acc, _ = cKDTree(stl).query(data_obs, workers=-1)
    d_comp, _ = cKDTree(data_obs).query(stl[above], workers=-1)
    acc = float(d_acc[d_acc < max_dist].mean()) if (d_acc < max_dist).any() else float("nan")
    comp = float(d_comp[d_comp < max_dist].mean()) if (d_comp < max_dist).any() else float("nan")
    return {
        "accuracy": acc,
        "completeness": comp,
        "overall": 0.5 * (acc + comp),
        "num_points": len(data_obs),
    }


def evaluate_dtu_mesh(
    mesh: trimesh.Trimesh,
    gt_root: str | Path,
    scan: int,
    world_mats: np.ndarray | None = None,
    masks: np.ndarray | None = None,
    dilate: int = 12,
    density: float = 0.2,
    max_dist: float = 20.0,
) -> dict[str, float]:
    """The full protocol on a world-frame mesh (mm). Culling is skipped without masks."""
    gt = load_dtu_gt(gt_root, scan)
    if world_mats is not None and masks is not None:
        mesh = cull_by_masks(mesh, world_mats, masks, dilate)
    return dtu_chamfer(sample_triangles(mesh, density), gt, density, max_dist)
