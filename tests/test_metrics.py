import sys

import numpy as np
import pytest
import trimesh
from scipy.spatial.distance import cdist
from skimage.metrics import peak_signal_noise_ratio

from neurecon.errors import MissingDependencyError
from neurecon.metrics import chamfer, mesh_chamfer, point_mesh_distance, psnr, ssim


def test_psnr_matches_skimage_and_masks():
    rng = np.random.default_rng(0)
    gt = rng.random((32, 40, 3))
    pred = np.clip(gt + rng.normal(0, 0.05, gt.shape), 0, 1)
    assert np.isclose(psnr(pred, gt), peak_signal_noise_ratio(gt, pred, data_range=1.0))
    mask = np.zeros((32, 40), bool)
    mask[:10] = True
    pred2 = pred.copy()
    pred2[~mask] = 1 - gt[~mask]  # errors outside the mask must not count
    assert np.isclose(
        psnr(pred2, gt, mask), peak_signal_noise_ratio(gt[mask], pred[mask], data_range=1.0)
    )


def test_ssim_identity_and_order():
    rng = np.random.default_rng(1)
    gt = rng.random((48, 48, 3))
    assert np.isclose(ssim(gt, gt), 1.0)
    assert ssim(np.clip(gt + 0.05 * rng.normal(size=gt.shape), 0, 1), gt) > ssim(
        np.clip(gt + 0.2 * rng.normal(size=gt.shape), 0, 1), gt
    )


def test_chamfer_matches_brute_force():
    rng = np.random.default_rng(2)
    a, b = rng.random((300, 3)), rng.random((200, 3)) + 0.1
    d = cdist(a, b)
    res = chamfer(a, b, threshold=0.1)
    assert np.isclose(res["accuracy"], d.min(1).mean())
    assert np.isclose(res["completeness"], d.min(0).mean())
    assert np.isclose(res["mean"], 0.5 * (d.min(1).mean() + d.min(0).mean()))
    p, r = (d.min(1) < 0.1).mean(), (d.min(0) < 0.1).mean()
    assert np.isclose(res["fscore"], 2 * p * r / (p + r))


@pytest.mark.parametrize("backend", ["igl", "trimesh"])
def test_point_mesh_distance_is_exact(backend, monkeypatch):
    """Distances to a box's triangles match the analytic distance to the box surface, with
    libigl and with the trimesh fallback."""
    if backend == "trimesh":
        pytest.importorskip("rtree")
        monkeypatch.setitem(sys.modules, "igl", None)  # import igl now raises ImportError
    h = np.array([0.5, 0.3, 0.2])
    box = trimesh.creation.box(extents=2 * h)
    p = np.random.default_rng(3).uniform(-1, 1, (2000, 3))
    q = np.abs(p) - h
    exact = np.linalg.norm(np.maximum(q, 0), axis=1) + np.abs(np.minimum(q.max(1), 0))
    assert np.allclose(point_mesh_distance(p, box), exact, atol=1e-9)


def test_mesh_chamfer_measures_geometry_not_sample_spacing():
    """A sphere reconstructed 1 % too large scores 1 % of its radius, and a near-perfect one
    scores almost nothing — unlike point-to-point Chamfer at the same sample counts, whose
    floor (the samples' spacing) is larger than the error it should measure."""
    rng = np.random.default_rng(4)
    gt_pts = rng.normal(size=(20000, 3))
    gt_pts /= np.linalg.norm(gt_pts, axis=1, keepdims=True)  # exact, uniform on the unit sphere
    gt_mesh = trimesh.creation.icosphere(subdivisions=6)  # its triangles stray < 0.01 %
    fine = trimesh.creation.icosphere(subdivisions=5)
    perfect = mesh_chamfer(fine, gt_pts, 0.01, n=20000, gt_mesh=gt_mesh)
    points_only = chamfer(fine.sample(20000, seed=0), gt_pts, 0.01)
    assert perfect["mean"] < 0.0005 < 0.005 < points_only["mean"]
    big = fine.copy()
    big.vertices *= 1.01
    cd = mesh_chamfer(big, gt_pts, 0.005, n=20000, gt_mesh=gt_mesh)
    assert abs(cd["accuracy"] - 0.01) < 5e-4 and abs(cd["completeness"] - 0.01) < 5e-4
    assert cd["fscore"] == 0.0  # every distance is above the 0.5 % threshold
    # Without the ground-truth mesh, accuracy falls back to the nearest ground-truth point.
    no_mesh = mesh_chamfer(big, gt_pts, 0.005, n=20000)
    assert no_mesh["accuracy"] > cd["accuracy"] and no_mesh["completeness"] == cd["completeness"]


def test_point_mesh_distance_names_what_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "igl", None)
    monkeypatch.setitem(sys.modules, "rtree", None)
    monkeypatch.setitem(sys.modules, "rtree.index", None)
    with pytest.raises(MissingDependencyError, match="pip install libigl"):
        point_mesh_distance(np.zeros((3, 3)), trimesh.creation.box())
