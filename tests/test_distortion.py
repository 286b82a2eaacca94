"""Lens distortion: our OpenCV / fisheye models against pycolmap's, and an instant-ngp capture
rendered through a known distortion that loads back to the exact pinhole render."""

from __future__ import annotations

import json
import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import fit_on_files

from neurecon.data import NGPScene, SyntheticScene, rays
from neurecon.data.cameras import pixel_rays
from neurecon.data.distortion import fisheye_distortion, opencv_distortion
from neurecon.data.posed import GL_TO_CV
from neurecon.metrics import psnr

OPENCV = {"k1": 0.12, "k2": 0.03, "p1": 0.002, "p2": -0.0015}
FISHEYE = {"k1": 0.05, "k2": -0.01, "k3": 0.002, "k4": -0.0004}


@pytest.mark.parametrize(
    ("model", "coeffs", "ours"),
    [
        ("OPENCV", [OPENCV[k] for k in ("k1", "k2", "p1", "p2")], opencv_distortion(**OPENCV)),
        ("OPENCV_FISHEYE", list(FISHEYE.values()), fisheye_distortion(**FISHEYE)),
    ],
)
def test_distortion_models_match_pycolmap(model, coeffs, ours):
    pycolmap = pytest.importorskip("pycolmap")
    cam = pycolmap.Camera.create_from_model_name(1, model, 1.0, 100, 100)
    cam.params = [1.0, 1.0, 0.0, 0.0, *coeffs]  # fx fy cx cy: image = distorted normalised
    rng = np.random.default_rng(0)
    xy = rng.uniform(-0.8, 0.8, (500, 2))
    ref = np.asarray(cam.img_from_cam(np.c_[xy, np.ones(len(xy))]))
    xd, yd = ours(xy[:, 0], xy[:, 1])
    assert np.abs(np.c_[xd, yd] - ref).max() < 1e-9


def _invert(distort, xd: np.ndarray, yd: np.ndarray, iters: int = 50):
    """Undistorted normalised coordinates whose distortion is (xd, yd): fixed-point iteration
    (OpenCV's undistortPoints does the same)."""
    x, y = xd.copy(), yd.copy()
    for _ in range(iters):
        dx, dy = distort(x, y)
        x, y = x + (xd - dx), y + (yd - dy)
    return x, y


def _render(scene: SyntheticScene, K: np.ndarray, c2w: torch.Tensor, u, v, ss: int = 3):
    """Exact render at pixel coordinates (u, v) (h, w), supersampled ss x ss (anti-aliased)."""
    acc = np.zeros((*u.shape, 3))
    offs = (np.arange(ss) + 0.5) / ss - 0.5
    for du in offs:
        for dv in offs:
            uu, vv = torch.tensor((u + du).ravel()), torch.tensor((v + dv).ravel())
            o, d = pixel_rays(torch.tensor(K).float(), c2w, uu.float(), vv.float())
            acc += scene.render_rays(o, d)[0].numpy().reshape(*u.shape, 3)
    return acc / ss**2


@pytest.fixture(scope="module")
def distorted_capture(tmp_path_factory):
    """The built-in scene photographed through an OpenCV lens (k1 k2 p1 p2), written as an
    instant-ngp capture, plus the exact pinhole renders of the same cameras."""
    root = tmp_path_factory.mktemp("ngp_distorted")
    (root / "images").mkdir()
    truth = SyntheticScene(
        shape="sphere", num_views=8, resolution=64, num_gt_points=1000, env_background=True
    )
    H = W = 64
    K = truth.K[0].double().numpy()
    distort = opencv_distortion(**OPENCV)
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    # Each distorted pixel sees the ray through its undistorted position.
    x, y = _invert(distort, (u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1])
    pu, pv = K[0, 0] * x + K[0, 2], K[1, 1] * y + K[1, 2]
    frames, exact = [], []
    for i in range(truth.num_views):
        img = _render(truth, K, truth.c2w[i], pu, pv)
        iio.imwrite(root / "images" / f"{i:03d}.png", (img * 255 + 0.5).astype(np.uint8))
        exact.append(_render(truth, K, truth.c2w[i], u, v))
        c2w_world = truth.c2w[i].double().numpy().copy()
        c2w_world[:3, 3] = truth.to_world_points(c2w_world[None, :3, 3])[0]
        frames.append(
            {
                "file_path": f"images/{i:03d}.png",
                "transform_matrix": (c2w_world @ GL_TO_CV).tolist(),
            }
        )
    # instant-ngp's principal point is in continuous pixel units (pixel 0's centre at 0.5).
    meta = {"fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2] + 0.5, "cy": K[1, 2] + 0.5}
    meta.update({"w": W, "h": H, **OPENCV, "frames": frames})
    (root / "transforms.json").write_text(json.dumps(meta))
    return root, exact


def test_undistorted_ngp_capture_matches_the_pinhole_render(distorted_capture):
    root, exact = distorted_capture
    s = NGPScene(str(root), test_every=4)
    assert s.valid is not None and s.pixels.dtype == torch.uint8
    scores = []
    for i, ref in enumerate(exact):
        valid = s.valid_mask(i)
        assert 0.7 < valid.mean() < 1.0  # pincushion: the pinhole corners fall outside the photo
        scores.append(psnr(s.image(i), ref, valid))
    print("undistortion PSNR per view (dB):", [f"{p:.1f}" for p in scores])
    assert min(scores) >= 35.0, scores


def test_sampled_rays_avoid_invalid_pixels(distorted_capture):
    root, _ = distorted_capture
    s = NGPScene(str(root), test_every=4)
    s.pixels[~s.valid] = 255  # paint the invalid pixels: no sampled ray may see them
    s.pixels[s.valid] = s.pixels[s.valid].clamp(max=254)
    g = torch.Generator().manual_seed(1)
    view, v, u = rays.draw_pixels(s.store, 50000, g)
    assert (~s.valid[rays.flat_index(s.store, view, v, u)]).any()  # raw draws hit them
    assert s.store.redraws > 0
    b = s.sample_rays(50000, g)
    assert (b.rgb < 1.0).any(dim=-1).all()


@pytest.mark.slow  # an end-to-end smoke run; the undistortion itself is checked above
def test_400_steps_on_the_distorted_capture_finish_with_a_finite_psnr(distorted_capture, tmp_path):
    root, _ = distorted_capture
    m = fit_on_files(
        tmp_path, "dataset=ngp", f"dataset.root={root}", "dataset.test_every=4",
        "trainer.max_steps=400", "eval.mesh_resolution=32",
    )  # fmt: skip
    print("400 steps on the distorted capture:", m["status"], "test PSNR", m["test/psnr"])
    assert m["status"] == "completed" and math.isfinite(m["test/psnr"]) and m["test/psnr"] > 15
