"""nerfstudio captures (``dataset=nerfstudio``), written the way ``ns-process-data`` writes them.

Layout as in nerfstudio's ``process_data/colmap_utils.py`` (``colmap_to_json``,
``create_ply_from_colmap``): ``transforms.json`` with the camera's ``w h fl_x fl_y cx cy``, its
lens coefficients and ``camera_model`` at the top, frames of ``file_path`` ``images/…``,
OpenGL ``transform_matrix``, ``colmap_im_id`` and ``mask_path``; ``applied_transform`` (3×4);
``ply_file_path`` naming an ASCII PLY of the sparse points (x y z, uint8 colour) in the poses'
frame; ``images_2/`` for a downscale of 2.
"""

from __future__ import annotations

import json
import math

import imageio.v3 as iio
import numpy as np
import pytest
from conftest import fit_on_files
from test_distortion import _invert, _render

from neurecon.data import DatasetError, NerfstudioScene, SyntheticScene
from neurecon.data.distortion import fisheye_distortion
from neurecon.data.io import downscale_image
from neurecon.data.posed import GL_TO_CV
from neurecon.metrics import psnr

FISHEYE = {"k1": 0.05, "k2": -0.01, "k3": 0.002, "k4": -0.0004}
# ns-process-data's applied_transform: COLMAP's world with y and z swapped, z negated.
APPLIED = np.eye(4)[:3][[0, 2, 1]] * np.array([[1.0], [1.0], [-1.0]])
STRIPE = 5  # masked-out columns at the left of every frame (pixels to ignore)


def write_ply(path, points: np.ndarray) -> None:
    """An ASCII PLY point cloud as nerfstudio's create_ply_from_colmap writes it."""
    lines = ["ply", "format ascii 1.0", f"element vertex {len(points)}", "property float x",
             "property float y", "property float z", "property uint8 red",
             "property uint8 green", "property uint8 blue", "end_header"]  # fmt: skip
    lines += [f"{x:8f} {y:8f} {z:8f} 128 128 128" for x, y, z in points]
    path.write_text("\n".join(lines) + "\n")


def sphere_world(truth: SyntheticScene) -> tuple[np.ndarray, float]:
    """The built-in sphere's centre and radius in the world frame (sdf_sphere's defaults)."""
    return truth.to_world_points(np.array([[0.1, -0.05, 0.05]]))[0], 0.5 * truth.to_world[0, 0]


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    """The built-in sphere photographed through an OpenCV fisheye lens, as ns-process-data
    writes a capture; plus the exact pinhole renders and the scene it was made from."""
    root = tmp_path_factory.mktemp("ns_capture")
    for d in ("images", "images_2", "masks"):
        (root / d).mkdir()
    truth = SyntheticScene(
        shape="sphere", num_views=6, resolution=48, num_gt_points=1000, env_background=True
    )
    H = W = 48
    K = truth.K[0].double().numpy()
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    x, y = _invert(fisheye_distortion(**FISHEYE), (u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1])
    pu, pv = K[0, 0] * x + K[0, 2], K[1, 1] * y + K[1, 2]
    mask = np.full((H, W), 255, np.uint8)
    mask[:, :STRIPE] = 0
    frames, exact = [], []
    for i in range(truth.num_views):
        name = f"frame_{i + 1:05d}.png"
        img = (_render(truth, K, truth.c2w[i], pu, pv) * 255 + 0.5).astype(np.uint8)
        iio.imwrite(root / "images" / name, img)
        # ns-process-data downscales with ffmpeg; here every other pixel, unlike our own
        # box filter, so the pixels loaded tell which folder was read.
        iio.imwrite(root / "images_2" / name, img[::2, ::2])
        iio.imwrite(root / "masks" / name, mask)
        exact.append(_render(truth, K, truth.c2w[i], u, v))
        c2w = truth.c2w[i].double().numpy().copy()
        c2w[:3, 3] = truth.to_world_points(c2w[None, :3, 3])[0]
        frames.append({"file_path": f"images/{name}", "transform_matrix": (c2w @ GL_TO_CV).tolist(),
                       "colmap_im_id": i + 1, "mask_path": f"masks/{name}"})  # fmt: skip
    # COLMAP's cx, cy: pixel 0's centre at 0.5.
    meta = {"w": W, "h": H, "fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2] + 0.5,
            "cy": K[1, 2] + 0.5, **FISHEYE, "camera_model": "OPENCV_FISHEYE", "frames": frames,
            "applied_transform": APPLIED.tolist(), "ply_file_path": "sparse_pc.ply"}  # fmt: skip
    (root / "transforms.json").write_text(json.dumps(meta, indent=4))
    # Sparse points on the sphere, plus a few wild ones that SfM leaves behind.
    centre, radius = sphere_world(truth)
    rng = np.random.default_rng(0)
    d = rng.normal(size=(400, 3))
    pts = centre + radius * d / np.linalg.norm(d, axis=1, keepdims=True)
    write_ply(root / "sparse_pc.ply", np.r_[pts, centre + rng.uniform(8, 12, (12, 3))])
    return root, truth, exact


def test_a_fisheye_capture_loads_undistorted_and_normalised_from_its_sparse_points(capture):
    root, truth, exact = capture
    s = NerfstudioScene(str(root), test_every=3)
    assert s.num_views == truth.num_views and s.masks is None
    # Where each pinhole pixel's ray meets the photo: the mask is in the photo's pixels.
    K = truth.K[0].double().numpy()
    v, u = np.mgrid[0:48, 0:48].astype(np.float64)
    xd, _ = fisheye_distortion(**FISHEYE)((u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1])
    photo_u = K[0, 0] * xd + K[0, 2]
    scores = []
    for i, ref in enumerate(exact):
        valid = s.valid_mask(i)
        assert not valid[photo_u < STRIPE - 1].any()  # mask_path: pixels to ignore
        assert valid[(photo_u > STRIPE) & (photo_u < 47)].mean() > 0.95
        scores.append(psnr(s.image(i), ref, valid))
    print("nerfstudio fisheye undistortion PSNR per view (dB):", [f"{p:.1f}" for p in scores])
    assert min(scores) >= 35.0, scores
    # The unit sphere is the sparse points' robust bounding sphere (the wild points dropped):
    # it holds the whole object and is not much larger. The cameras alone would give a sphere
    # of radius 2.75 about their look-at point, 0.31 from the object's centre.
    _, radius = sphere_world(truth)
    surface = (truth.gt_points - s.to_world[:3, 3]) / s.to_world[0, 0]  # world -> unit frame
    assert np.linalg.norm(surface, axis=1).max() < 1.0
    assert radius < s.to_world[0, 0] < 1.3 * radius
    for i in range(s.num_views):  # the poses, back in the world frame
        assert np.allclose(s.c2w[i, :3, :3].numpy(), truth.c2w[i, :3, :3].numpy(), atol=1e-5)
        back = s.to_world_points(s.c2w[i, :3, 3].double().numpy()[None])
        want = truth.to_world_points(truth.c2w[i, :3, 3].double().numpy()[None])
        assert np.allclose(back, want, atol=1e-4)


def test_use_mask_reads_mask_path_as_the_object_mask(capture):
    root, _, _ = capture
    s = NerfstudioScene(str(root), test_every=3, use_mask=True)
    assert s.masks is not None
    assert not s.mask(0)[:, :2].any() and s.mask(0)[:, 2 * STRIPE :].all()
    valid = s.valid_mask(0)  # None: all valid (this fisheye covers every pinhole pixel)
    assert valid is None or valid[:, :2].all()  # no longer ignored: the mask loss sees them


def test_downscale_reads_images_2_and_scales_the_intrinsics(capture, tmp_path):
    root, truth, _ = capture
    meta = json.loads((root / "transforms.json").read_text())
    meta["camera_model"] = "PINHOLE"  # no resampling: the loaded pixels are the file's
    for k in FISHEYE:
        meta[k] = 0.0
    (root / "pinhole.json").write_text(json.dumps(meta))
    s = NerfstudioScene(str(root), transforms="pinhole.json", downscale=2, test_every=3)
    ref = iio.imread(root / "images_2" / "frame_00002.png")
    assert np.abs(s.image(1) * 255 - ref).max() < 0.01  # images_2/frame_00002.png as stored
    full = iio.imread(root / "images" / "frame_00002.png")
    assert np.abs(downscale_image(full, 2).astype(float) - ref).max() > 10  # not images/ halved
    K = truth.K[0].double().numpy()
    # Full-size pixel centres (cx - 0.5) scaled by 24 / 48 about the pixel grid's edge.
    assert np.allclose(s.K[0].numpy()[0, 0], K[0, 0] / 2, atol=1e-4)
    assert np.allclose(s.K[0].numpy()[0, 2], (K[0, 2] + 0.5) / 2 - 0.5, atol=1e-4)
    assert s.valid_mask(1)[:, : math.ceil(STRIPE / 2) - 1].sum() == 0  # masks/ downscaled here


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"camera_model": "EQUIRECTANGULAR"}, "frame 0: camera_model EQUIRECTANGULAR is not"),
        ({"ply_file_path": "nowhere.ply"}, "nowhere.ply is missing"),
        ({"applied_transform": [[1, 0], [0, 1]]}, "applied_transform is not a finite 3x4"),
    ],
)
def test_bad_captures_are_named(capture, tmp_path, edit, message):
    root, _, _ = capture
    meta = {**json.loads((root / "transforms.json").read_text()), **edit}
    (root / "bad.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=message):
        NerfstudioScene(str(root), transforms="bad.json")


def test_training_on_a_nerfstudio_capture_from_the_config_group(capture, tmp_path):
    root, _, _ = capture
    m = fit_on_files(
        tmp_path, "dataset=nerfstudio", f"dataset.root={root}", "dataset.test_every=3",
        "trainer.max_steps=30", "eval.mesh_resolution=0",
    )  # fmt: skip
    assert m["status"] == "completed" and math.isfinite(m["test/psnr"]) and m["test/psnr"] > 5
