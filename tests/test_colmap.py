"""COLMAP sparse models in the text format, written from known poses."""

import imageio.v3 as iio
import numpy as np
import pytest
from conftest import fit_on_files
from scipy.spatial.transform import Rotation
from test_formats import _poses

from neurecon.data import ColmapScene, DatasetError

pytest.importorskip("pycolmap")

W, H = 64, 48
CENTRE = np.array([0.3, -0.2, 0.1])


def write_colmap(
    root, model="PINHOLE", params=(50.0, 52.0, 32.0, 24.0), n=6, image=None, second=None
):
    """A text model of ``n`` images; with ``second`` = (w, h, params), odd images use a second
    PINHOLE camera of another size."""
    sparse = root / "sparse" / "0"
    sparse.mkdir(parents=True)
    (root / "images").mkdir()
    cams = f"# Camera list\n1 {model} {W} {H} {' '.join(map(str, params))}\n"
    if second is not None:
        cams += f"2 PINHOLE {second[0]} {second[1]} {' '.join(map(str, second[2]))}\n"
    (sparse / "cameras.txt").write_text(cams)
    poses, lines = _poses(n, centre=CENTRE), ["# Image list"]
    for i, c2w in enumerate(poses):
        w2c = np.linalg.inv(c2w)
        qx, qy, qz, qw = Rotation.from_matrix(w2c[:3, :3]).as_quat()
        t = w2c[:3, 3]
        cam, (w, h) = (2, second[:2]) if second is not None and i % 2 else (1, (W, H))
        lines += [f"{i + 1} {qw} {qx} {qy} {qz} {t[0]} {t[1]} {t[2]} {cam} img_{i:02d}.png", ""]
        img = image if image is not None else np.full((h, w, 3), 80 + 10 * i, np.uint8)
        iio.imwrite(root / "images" / f"img_{i:02d}.png", img)
    (sparse / "images.txt").write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng(0)
    pts = CENTRE + rng.uniform(-0.5, 0.5, (200, 3))
    pts = np.r_[pts, [[40.0, 0, 0], [0, -60.0, 0]]]  # far outliers must not set the scale
    (sparse / "points3D.txt").write_text(
        "".join(f"{i + 1} {p[0]} {p[1]} {p[2]} 128 128 128 0.5\n" for i, p in enumerate(pts))
    )
    return poses, pts[:-2]


def test_colmap_round_trip_and_robust_normalisation(tmp_path):
    poses, inliers = write_colmap(tmp_path)
    s = ColmapScene(str(tmp_path), test_every=0)
    assert np.allclose(s.K[0].numpy(), [[50, 0, 31.5], [0, 52, 23.5], [0, 0, 1]], atol=1e-5)
    centre, radius = s.to_world[:3, 3], s.to_world[0, 0]
    assert np.linalg.norm(centre - inliers.mean(0)) < 0.05
    assert 0.5 < radius < 1.2  # the outliers 40-60 units away are ignored
    for i, c2w in enumerate(poses):
        assert np.allclose(s.c2w[i, :3, :3].numpy(), c2w[:3, :3], atol=1e-5)
        back = s.to_world_points(s.c2w[i, :3, 3].double().numpy()[None])[0]
        assert np.allclose(back, c2w[:3, 3], atol=1e-4)
    # The SfM points are kept in the normalised frame, inside the unit sphere (the outliers
    # are not): each maps back onto a point of the model.
    kept = s.to_world_points(s.sfm_points.double().numpy())
    assert len(kept) > 100 and (s.sfm_points.norm(dim=1) < 1).all()
    assert np.abs(kept[:, None] - inliers[None]).max(-1).min(1).max() < 1e-4


def test_opencv_model_is_undistorted_to_pinhole(tmp_path):
    import pycolmap

    params = [50.0, 52.0, 32.0, 24.0, -0.4, 0.05, 0.002, -0.001]
    cam = pycolmap.Camera.create_from_model_name(1, "OPENCV", 50.0, W, H)
    cam.params = params
    x_cam = np.array([[0.5, 0.4, 1.0]])  # a point near the image corner
    u_d, v_d = cam.img_from_cam(x_cam)[0] - 0.5  # where the lens puts it (pixel centres)
    img = np.zeros((H, W, 3), np.uint8)
    img[round(float(v_d)), round(float(u_d))] = 255
    write_colmap(tmp_path, "OPENCV", params, image=img)
    s = ColmapScene(str(tmp_path), test_every=0)
    # After undistortion the dot is where the pinhole K projects the same point.
    K = s.K[0].double().numpy()
    u_p, v_p = (K @ x_cam[0])[:2]
    out = s.images[0].numpy()[..., 0].astype(float)
    vv, uu = np.unravel_index(out.argmax(), out.shape)
    assert abs(uu - u_p) <= 1.0 and abs(vv - v_p) <= 1.0
    assert abs(u_p - u_d) > 2  # the distortion was large enough to matter


def test_colmap_errors_name_the_file(tmp_path):
    write_colmap(tmp_path)
    (tmp_path / "images" / "img_03.png").unlink()
    with pytest.raises(
        DatasetError, match=r"img_03\.png \(image 4 of the COLMAP model\) is missing"
    ):
        ColmapScene(str(tmp_path))
    (tmp_path / "sparse" / "0" / "points3D.txt").unlink()
    with pytest.raises(DatasetError, match=r"points3D\.bin or points3D\.txt is missing"):
        ColmapScene(str(tmp_path))


def test_two_cameras_of_different_sizes_load_and_train(tmp_path):
    write_colmap(tmp_path / "scene", second=(40, 56, (45.0, 45.0, 20.0, 28.0)))
    s = ColmapScene(str(tmp_path / "scene"), test_every=3)
    assert [s.size(i) for i in range(4)] == [(H, W), (56, 40), (H, W), (56, 40)]
    assert np.allclose(s.K[1].numpy(), [[45, 0, 19.5], [0, 45, 27.5], [0, 0, 1]])
    m = fit_on_files(
        tmp_path / "run", "dataset=colmap", f"dataset.root={tmp_path / 'scene'}",
        "dataset.test_every=3", "trainer.max_steps=100", "eval.mesh_resolution=0",
    )  # fmt: skip
    assert m["status"] == "completed" and np.isfinite(m["test/psnr"]) and m["steps"] == 100
