"""The DTU evaluation on small synthetic files in the official formats, with known answers."""

import numpy as np
import pytest
import scipy.io
import trimesh

from neurecon.data.cameras import compose_projection, look_at
from neurecon.metrics.dtu import (
    cull_by_masks,
    evaluate_dtu_mesh,
    radius_downsample,
    sample_triangles,
)

SCAN = 7


def _plane_mesh(z: float, lo: float = 10.0, hi: float = 40.0) -> trimesh.Trimesh:
    v = np.array([[lo, lo, z], [hi, lo, z], [hi, hi, z], [lo, hi, z]])
    return trimesh.Trimesh(v, [[0, 1, 2], [0, 2, 3]], process=False)


def write_gt(root, obs_mask=None, plane=(0.0, 0.0, 1.0, 0.5)):
    """STL: a 0.2 mm grid on z = 0 over [0, 50]² plus points below the plane at z = -5."""
    (root / "ObsMask").mkdir(parents=True)
    (root / "Points" / "stl").mkdir(parents=True)
    g = np.arange(0, 50.01, 0.2)
    xx, yy = np.meshgrid(g, g)
    top = np.c_[xx.ravel(), yy.ravel(), np.zeros(xx.size)]
    below = top[::50] + np.array(
        [0.0, 0.0, -5.0]
    )  # removed by the plane filter (z + 0.5 > 0 keeps z = 0)
    trimesh.PointCloud(np.r_[top, below]).export(
        root / "Points" / "stl" / f"stl{SCAN:03}_total.ply"
    )
    bb = np.array([[0.0, 0.0, -10.0], [50.0, 50.0, 10.0]])
    res = 1.0
    shape = tuple((np.round((bb[1] - bb[0]) / res) + 1).astype(int))
    scipy.io.savemat(
        root / "ObsMask" / f"ObsMask{SCAN}_10.mat",
        {
            "ObsMask": np.ones(shape, np.uint8) if obs_mask is None else obs_mask(shape),
            "BB": bb,
            "Res": np.array([[res]]),
        },
    )
    scipy.io.savemat(root / "ObsMask" / f"Plane{SCAN}.mat", {"P": np.array(plane).reshape(4, 1)})


def test_sampling_density_and_downsampling():
    pts = sample_triangles(_plane_mesh(0.0), 0.2)
    assert len(pts) > (30 / 0.2) ** 2 * 0.8  # the whole 30x30 mm patch at ~0.2 mm
    thin = radius_downsample(pts, 0.2)
    d, _ = trimesh.proximity.cKDTree(thin).query(thin, k=2)
    assert d[:, 1].min() >= 0.2 - 1e-9


def test_accuracy_equals_plane_offset(tmp_path):
    write_gt(tmp_path)
    d = 1.5
    res = evaluate_dtu_mesh(_plane_mesh(d), tmp_path, SCAN)
    assert res["accuracy"] == pytest.approx(d, abs=0.02)
    # Completeness: STL points under the mesh are d away; the rest (outside [10, 40]²) farther;
    # the STL points below the plane must not count at all.
    g = np.arange(0, 50.01, 0.2)
    xx, yy = np.meshgrid(g, g)
    dx = np.maximum(np.maximum(10 - xx, xx - 40), 0)
    dy = np.maximum(np.maximum(10 - yy, yy - 40), 0)
    exp = np.sqrt(dx**2 + dy**2 + d**2)
    assert res["completeness"] == pytest.approx(exp[exp < 20].mean(), rel=0.02)
    assert res["overall"] == pytest.approx((res["accuracy"] + res["completeness"]) / 2)


def test_obs_mask_and_max_dist_exclude_points(tmp_path):
    def half(shape):  # observable only where x < 25
        m = np.zeros(shape, np.uint8)
        m[:26] = 1
        return m

    write_gt(tmp_path, obs_mask=half)
    near, far = _plane_mesh(1.0, 10, 24), _plane_mesh(5.0, 26, 40)  # far part not observable
    outlier = _plane_mesh(30.0, 12, 20)  # observable but beyond 20 mm: excluded from the mean
    res = evaluate_dtu_mesh(trimesh.util.concatenate([near, far, outlier]), tmp_path, SCAN)
    assert res["accuracy"] == pytest.approx(1.0, abs=0.02)


def test_missing_gt_files_are_named(tmp_path):
    with pytest.raises(Exception, match=r"ObsMask7_10\.mat is missing"):
        evaluate_dtu_mesh(_plane_mesh(0.0), tmp_path, SCAN)


def test_cull_by_masks_removes_geometry_outside_the_object():
    K = np.array([[100.0, 0, 31.5], [0, 100.0, 31.5], [0, 0, 1]])
    P = compose_projection(K, look_at(np.array([0.0, 0.0, 10.0]), np.zeros(3), up=(0.0, 1.0, 0.0)))[
        None
    ]
    mask = np.zeros((1, 64, 64), bool)
    mask[0, 16:48, 16:48] = True  # the object: |x|, |y| < ~1.6 at depth 10
    inside = trimesh.creation.box((1.0, 1.0, 0.1))
    outside = trimesh.creation.box((1.0, 1.0, 0.1))
    outside.apply_translation([2.2, 0.0, 0.0])  # projects to u in [48.5, 58.5]: in the image
    # (vertices a view cannot see are not judged by it, as in the reference protocol)
    culled = cull_by_masks(trimesh.util.concatenate([inside, outside]), P, mask, dilate=1)
    assert len(culled.faces) == len(inside.faces)
    assert np.abs(culled.vertices[np.unique(culled.faces)][:, 0]).max() < 1.0
