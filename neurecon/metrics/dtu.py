"""The DTU surface evaluation as used by NeuS / MonoSDF / Neuralangelo papers.

It follows DTU's MATLAB evaluation (``PointCompareMain.m``) as its widely used Python port
(DTUeval-python) does:

1. the mesh is culled by the dilated object masks of all views, by a named protocol
   (:data:`PROTOCOLS`: the papers differ in the dilation, which moves the figures),
2. points are sampled on its triangles at ``density`` mm and thinned so that no two are closer
   than ``density`` (greedy radius down-sampling in random order),
3. the thinned points inside the bounding box ``BB`` (± ``patch`` mm) are the data; those that
   also fall inside the observability mask ``ObsMask/ObsMask{scan}_10.mat`` are scored for
   **accuracy**: their distances to the STL ground truth ``Points/stl/stl{scan:03}_total.ply``,
4. **completeness**: distances from the STL points above the plane ``ObsMask/Plane{scan}.mat``
   to *all* the data points in the box (MATLAB's ``MaxDistCP(Qdata, Qstl, BB, MaxDist)``): the
   observability mask decides only which data points count for accuracy,
5. each mean only over distances below ``max_dist`` (20 mm); overall = (accuracy + completeness)/2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import trimesh
from scipy.spatial import cKDTree
from tqdm import tqdm

from neurecon.errors import ConfigError, DatasetError
from neurecon.geometry.hull import VisualHull


@dataclass(frozen=True)
class CullProtocol:
    """How a paper culls its mesh by the training masks before the DTU evaluation: a vertex is
    kept when it projects inside the mask, dilated by a disk of ``dilate_px`` pixels of the
    full-resolution photos (1600x1200), in every view whose image it falls in; a face is kept
    when its three vertices are."""

    name: str
    dilate_px: int
    source: str

    def describe(self) -> str:
        if self.dilate_px == 0:
            return f"{self.name}: no mask culling"
        return f"{self.name}: masks dilated by {self.dilate_px} px, all views ({self.source})"


PROTOCOLS: dict[str, CullProtocol] = {
    p.name: p
    for p in (
        # Totoro97/NeuS#3 and #74: "cleaned by the 2D masks with 50 pixels dilation".
        CullProtocol("neus", 50, "NeuS's clean_mesh script"),
        # MonoSDF's cull_scan: binary_dilation(mask, disk(24)), as UNISURF; Neuralangelo's
        # evaluation uses the same script.
        CullProtocol("monosdf", 24, "MonoSDF, Neuralangelo, UNISURF"),
        # SphereGuided (Dogaru et al., 4.4): NeuralWarp's 12 px, used for every method there.
        CullProtocol("neuralwarp", 12, "NeuralWarp, SphereGuided"),
        CullProtocol("none", 0, "the raw mesh"),
    )
}


def protocol(name: str) -> CullProtocol:
    if name not in PROTOCOLS:
        raise ConfigError(f"DTU protocol {name!r}: choose from {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]


def cull_by_masks(
    mesh: trimesh.Trimesh,
    world_mats: np.ndarray,
    masks: np.ndarray,
    dilate: float = 12,
) -> trimesh.Trimesh:
    """Keep vertices that project inside the mask, dilated by a disk of radius ``dilate``
    pixels, of every view that sees them; faces whose three vertices are kept.

    A vertex outside a view's image (or behind it) is not judged by that view.
    Args:
        world_mats: (V, 3, 4) or (V, 4, 4) world → pixel projections (DTU ``world_mat``).
        masks: (V, H, W) bool object masks at the resolution the projections refer to (or a
            sequence of per-view (H_i, W_i) masks).
        dilate: the disk's radius in pixels of these masks (0: the masks as they are).
    """
    # The disk of radius round(dilate) (scikit-image's disk, as the papers' scripts dilate).
    hull = VisualHull(world_mats, masks)
    keep = ~hull.outside(np.asarray(mesh.vertices), dilate_px=round(dilate))
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
            raise DatasetError(
                f"eval.metrics.dtu.gt_root: DTU ground-truth file {f} is missing ({key})"
            )
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
    # All data points in the box, not only the observable ones: DTU's definition.
    d_comp, _ = cKDTree(data_in).query(stl[above], workers=-1)
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
    protocol_name: str = "neus",
    dilate: float | None = None,
    mask_scale: float = 1.0,
    density: float = 0.2,
    max_dist: float = 20.0,
    progress: bool = False,
) -> dict[str, Any]:
    """The full evaluation on a world-frame mesh (mm), culled by ``protocol_name``
    (:data:`PROTOCOLS`; ``dilate`` overrides its radius, in full-resolution pixels).
    ``mask_scale``: the masks' size over the photos' (1/4 for ``dataset.downscale=4``). Without
    masks nothing is culled, and the result says so."""
    chosen = protocol(protocol_name)
    radius = chosen.dilate_px if dilate is None else float(dilate)
    steps = ["read ground truth", "cull by masks", "sample", "thin, score"]
    with tqdm(total=len(steps), desc="DTU evaluation", disable=not progress, leave=False) as bar:
        bar.set_postfix_str(steps[0])
        gt = load_dtu_gt(gt_root, scan)
        bar.update()
        culled = chosen.name != "none" and world_mats is not None and masks is not None
        if culled:
            bar.set_postfix_str(steps[1])
            mesh = cull_by_masks(mesh, world_mats, masks, radius * mask_scale)
        bar.update()
        bar.set_postfix_str(steps[2])
        points = sample_triangles(mesh, density)
        bar.update()
        bar.set_postfix_str(steps[3])
        res: dict[str, Any] = dtu_chamfer(points, gt, density, max_dist)
        bar.update()
    res["protocol"] = chosen.name if culled else "none"
    res["mask_dilate_px"] = radius if culled else 0
    return res
