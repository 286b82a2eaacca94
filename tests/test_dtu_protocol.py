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


# ---- completeness as DTU defines it, against known answers and an independent reference ----


def _write_gt_points(root, stl, bb, res, obs, plane=(0.0, 0.0, 0.0, 1.0)):
    """DTU's ground-truth layout for arbitrary STL points and observability mask."""
    (root / "ObsMask").mkdir(parents=True)
    (root / "Points" / "stl").mkdir(parents=True)
    trimesh.PointCloud(stl).export(root / "Points" / "stl" / f"stl{SCAN:03}_total.ply")
    obs_file = {"ObsMask": obs.astype(np.uint8), "BB": bb, "Res": np.array([[res]])}
    scipy.io.savemat(root / "ObsMask" / f"ObsMask{SCAN}_10.mat", obs_file)
    scipy.io.savemat(root / "ObsMask" / f"Plane{SCAN}.mat", {"P": np.array(plane).reshape(4, 1)})


def _reference_dtu(data, stl, bb, res, obs, plane, max_dist=20.0, patch=60.0):
    """DTU's definition, written from PointCompareMain.m / BaseEval and read independently of
    neurecon.metrics.dtu: brute-force distances, no KD-tree. ``data``: the thinned mesh points.
    Data in the box (± patch, as DTUeval-python) are Qdata; those inside ObsMask count for
    accuracy; completeness is MaxDistCP(Qdata, Qstl): every STL point above the plane to its
    nearest Qdata point, whatever the mask says."""
    from scipy.spatial.distance import cdist

    in_box = np.all((data >= bb[0] - patch) & (data < bb[1] + 2 * patch), axis=1)
    qdata = data[in_box]
    idx = np.round((qdata - bb[0]) / res).astype(int)
    ok = np.all((idx >= 0) & (idx < np.array(obs.shape)), axis=1)
    in_mask = np.zeros(len(qdata), bool)
    in_mask[ok] = obs[idx[ok, 0], idx[ok, 1], idx[ok, 2]] > 0
    above = stl[(np.c_[stl, np.ones(len(stl))] @ np.asarray(plane)) > 0]

    def nearest(a, b):  # for each row of a, the distance to the nearest row of b, in chunks
        return np.concatenate([cdist(a[i : i + 2000], b).min(1) for i in range(0, len(a), 2000)])

    d_acc = nearest(qdata[in_mask], stl)
    d_comp = nearest(above, qdata)
    acc, comp = d_acc[d_acc < max_dist].mean(), d_comp[d_comp < max_dist].mean()
    return acc, comp, nearest(above, qdata[in_mask])  # the last: the old, wrong completeness


def _grid(lo, hi, step, z=0.0):
    g = np.arange(lo, hi + 1e-9, step)
    xx, yy = np.meshgrid(g, g)
    return np.c_[xx.ravel(), yy.ravel(), np.full(xx.size, z)]


@pytest.mark.parametrize("d", [0.5, 2.0])
def test_a_sphere_offset_by_d_scores_d_both_ways(tmp_path, d):
    rng = np.random.default_rng(0)
    v = rng.normal(size=(200_000, 3))
    stl = 20.0 * v / np.linalg.norm(v, axis=1, keepdims=True)
    bb = np.array([[-30.0] * 3, [30.0] * 3])
    _write_gt_points(tmp_path, stl, bb, 1.0, np.ones((61, 61, 61), bool))
    res = evaluate_dtu_mesh(trimesh.creation.icosphere(5, radius=20.0 + d), tmp_path, SCAN)
    assert res["accuracy"] == pytest.approx(d, abs=0.03)
    assert res["completeness"] == pytest.approx(d, abs=0.03)


def _misplaced_patch_case(root):
    """Ground truth: a plane z = 0 over [0, 50]². The mesh has it with a hole over [5, 45]²
    (a missed surface), bridged by a patch misplaced 5 mm up. The observability mask covers
    |z| <= 4 only, so the patch counts for no accuracy, but it is still the surface nearest to
    the ground truth under the middle of the hole (5 mm, where the rim is up to 20 mm away)."""
    stl = _grid(0, 50, 0.2)
    bb = np.array([[0.0, 0.0, -10.0], [50.0, 50.0, 10.0]])
    obs = np.zeros((51, 51, 21), bool)
    obs[:, :, 6:15] = True  # z index k is z = k - 10: |z| <= 4
    _write_gt_points(root, stl, bb, 1.0, obs)
    parts = []
    for x0, x1, y0, y1 in [(0, 50, 0, 5), (0, 50, 45, 50), (0, 5, 5, 45), (45, 50, 5, 45)]:
        v = np.array([[x0, y0, 0], [x1, y0, 0], [x1, y1, 0], [x0, y1, 0]], float)
        parts.append(trimesh.Trimesh(v, [[0, 1, 2], [0, 2, 3]], process=False))
    patch = np.array([[5, 5, 5], [45, 5, 5], [45, 45, 5], [5, 45, 5]], float)
    parts.append(trimesh.Trimesh(patch, [[0, 1, 2], [0, 2, 3]], process=False))
    return trimesh.util.concatenate(parts), stl, bb, obs


def test_completeness_counts_surface_outside_the_observability_mask(tmp_path):
    """The misplaced patch is outside ObsMask but is the nearest surface for the ground truth
    under the hole: DTU's completeness measures to it (analytic answer), and so does the
    brute-force reference; measuring only to the masked points (the old code) is far worse."""
    mesh, stl, _, _ = _misplaced_patch_case(tmp_path)
    res = evaluate_dtu_mesh(mesh, tmp_path, SCAN)
    # analytic: under the hole, min(distance to the rim in the plane, 5 mm up to the patch);
    # elsewhere 0, plus the 0.2 mm sampling's own spacing (what accuracy measures on the plane)
    x, y = stl[:, 0], stl[:, 1]
    in_hole = (x > 5) & (x < 45) & (y > 5) & (y < 45)
    rim = np.minimum.reduce([x - 5, 45 - x, y - 5, 45 - y])
    want = np.where(in_hole, np.minimum(rim, 5.0), 0.0).mean() + res["accuracy"]
    assert res["accuracy"] < 0.15  # the plane's points, on the ground truth
    assert res["completeness"] == pytest.approx(want, abs=0.1)
    old_way = np.where(in_hole, rim, 0.0).mean()  # to the observable points only: the rim
    assert old_way > want + 1.0  # the case tells the two definitions apart


def test_the_evaluation_matches_an_independent_reference_on_a_partial_mask(tmp_path):
    from neurecon.metrics.dtu import dtu_chamfer, load_dtu_gt

    mesh, _, bb, obs = _misplaced_patch_case(tmp_path)
    gt = load_dtu_gt(tmp_path, SCAN)  # the STL as stored (float32 in the PLY)
    rng = np.random.default_rng(3)
    noisy = mesh.copy()
    noisy.vertices = noisy.vertices + rng.normal(0, 0.3, noisy.vertices.shape)  # not planar
    data = radius_downsample(sample_triangles(noisy, 0.2), 0.2, seed=0)
    ours = dtu_chamfer(data, gt, 0.2, 20.0)  # re-thinning a thinned set: identity
    plane = (0.0, 0.0, 0.0, 1.0)
    acc, comp, comp_masked_only = _reference_dtu(data, gt["stl"], bb, 1.0, obs, plane)
    assert ours["accuracy"] == pytest.approx(acc, rel=1e-9)
    assert ours["completeness"] == pytest.approx(comp, rel=1e-9)
    wrong = comp_masked_only[comp_masked_only < 20].mean()
    assert abs(wrong - comp) / comp > 0.1  # the old definition fails this test


@pytest.mark.parametrize(("name", "px"), [("neus", 50), ("monosdf", 24), ("neuralwarp", 12)])
def test_named_protocols_cull_by_their_papers_dilation(name, px):
    """One view, a mask of one pixel: a vertex survives exactly when it projects within the
    protocol's disk radius of it (scaled to downscaled masks)."""
    from neurecon.metrics.dtu import PROTOCOLS

    assert PROTOCOLS[name].dilate_px == px
    K = np.array([[100.0, 0, 100.0], [0, 100.0, 100.0], [0, 0, 1]])  # x = 0 → pixel 100
    P = compose_projection(K, look_at(np.array([0.0, 0.0, 10.0]), np.zeros(3), up=(0.0, 1.0, 0.0)))
    mask = np.zeros((200, 200), bool)
    mask[100, 100] = True
    # single-vertex "faces" at pixel offsets r from the mask pixel, along u
    pts, faces = [], []
    for i, r in enumerate([px - 1, px + 1]):
        x = r / 100.0 * 10.0  # pixels → world at depth 10
        pts += [[x, 0.0, 0.0], [x, 0.0, 0.0], [x, 0.0, 0.0]]
        faces.append([3 * i, 3 * i + 1, 3 * i + 2])
    mesh = trimesh.Trimesh(np.array(pts), faces, process=False)
    # the camera looks down -z from z=10 with y up: x maps to decreasing or increasing u
    kept = cull_by_masks(mesh, P[None], mask[None], dilate=PROTOCOLS[name].dilate_px)
    assert len(kept.faces) == 1 and abs(kept.vertices[kept.faces[0, 0], 0]) < px / 10


def test_the_protocol_that_ran_is_recorded(tmp_path):
    write_gt(tmp_path)
    K = np.array([[100.0, 0, 32.0], [0, 100.0, 32.0], [0, 0, 1]])
    P = compose_projection(K, look_at(np.array([25.0, 25.0, 500.0]), np.array([25.0, 25.0, 0]),
                                      up=(0.0, 1.0, 0.0)))[None]  # fmt: skip
    masks = np.ones((1, 64, 64), bool)
    res = evaluate_dtu_mesh(_plane_mesh(0.5), tmp_path, SCAN, P, masks, "monosdf", mask_scale=0.25)
    assert res["protocol"] == "monosdf" and res["mask_dilate_px"] == 24
    assert evaluate_dtu_mesh(_plane_mesh(0.5), tmp_path, SCAN)["protocol"] == "none"  # no masks
    with pytest.raises(Exception, match="choose from"):
        evaluate_dtu_mesh(_plane_mesh(0.5), tmp_path, SCAN, P, masks, "nosuch")
