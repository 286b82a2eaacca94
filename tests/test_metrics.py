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


def _plane_view(z0: float = 2.0, hw: tuple[int, int] = (30, 40)):
    """A camera looking down +z at the plane z = z0 (camera frame = the frame): the exact ray
    distance of every pixel centre, and points on the plane at some pixel centres."""
    H, W = hw
    K = np.array([[50.0, 0.0, 19.5], [0.0, 55.0, 14.5], [0.0, 0.0, 1.0]])
    c2w = np.eye(4)
    c2w[:3, 3] = [0.1, -0.2, 0.0]  # an origin off the axis: distances are to the camera centre
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    d_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u, float)], -1)
    depth = (z0 * np.linalg.norm(d_cam, axis=-1)).astype(np.float32)  # distance to z = z0
    rng = np.random.default_rng(0)
    pu, pv = rng.integers(0, W, 200), rng.integers(0, H, 200)
    pts = d_cam[pv, pu] * z0 + c2w[:3, 3]
    return depth, K, c2w, pts, (pu, pv)


def test_sfm_depth_errors_are_exact_on_a_known_plane():
    from neurecon.metrics.depth import frame_scale, sfm_depth_errors, surface_depth

    depth, K, c2w, pts, (pu, _) = _plane_view()
    assert np.abs(sfm_depth_errors(depth, K, c2w, pts)).max() < 1e-5
    # The surface 0.05 farther: every point's error is 0.05.
    err = sfm_depth_errors(depth + 0.05, K, c2w, pts)
    assert len(err) == len(pts) and np.allclose(err, 0.05, atol=1e-5)
    # Outside the mask, behind the camera, outside the image or off the surface: not counted.
    mask = np.zeros(depth.shape, bool)
    mask[:, :20] = True
    behind = pts * np.array([1, 1, -1])
    far_side = pts + np.array([100.0, 0, 0])
    hole = depth.copy()
    hole[:, :5] = np.nan
    n_in = int(((pu < 20) & (pu >= 5)).sum())
    both = np.concatenate([pts, behind, far_side])
    assert len(sfm_depth_errors(hole, K, c2w, both, mask)) == n_in
    # surface_depth: the opacity-normalised expected depth, NaN where there is no surface.
    sd = surface_depth(np.array([[1.0, 0.1]]), np.array([[0.5, 0.1]]))
    assert sd[0, 0] == pytest.approx(2.0) and np.isnan(sd[0, 1])
    assert frame_scale(np.diag([200.0, 200.0, 200.0, 1.0])) == pytest.approx(200.0)


def test_sfm_depth_metric_is_the_median_in_world_units():
    from neurecon.metrics.nodes import SfMDepth, ViewImages

    depth, K, c2w, pts, _ = _plane_view()
    img = np.zeros((*depth.shape, 3), np.float32)
    # A quarter of the points hidden behind a nearer surface (0.5 in front of them): the
    # median is still the visible points' error, 0.01 frame units = 2 world units at scale 200.
    hidden = pts[:50] + (pts[:50] - c2w[:3, 3]) * 0.5
    view = ViewImages(img, img, img, None, None, depth=depth + 0.01, K=K, c2w=c2w,
                      points=np.concatenate([pts, hidden]), scale=200.0)  # fmt: skip
    assert SfMDepth().score(view) == pytest.approx(2.0, abs=1e-3)
    assert SfMDepth().score(ViewImages(img, img, img, None, None)) is None


def test_sfm_depth_leaves_out_points_the_view_does_not_see():
    from neurecon.metrics.depth import sfm_depth_errors

    depth, K, c2w, pts, _ = _plane_view()
    behind_the_plane = pts[:150] + (pts[:150] - c2w[:3, 3]) * 0.5  # the surface hides them
    both = np.concatenate([pts, behind_the_plane])
    assert len(sfm_depth_errors(depth, K, c2w, both)) == 350
    err = sfm_depth_errors(depth + 0.01, K, c2w, both, occlusion=0.05)
    assert len(err) == 200 and np.allclose(err, 0.01, atol=1e-5)
    # A render too far (a hole, or the surface behind the point) always counts.
    assert len(sfm_depth_errors(depth + 0.5, K, c2w, pts, occlusion=0.05)) == 200
