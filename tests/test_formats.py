"""Blender, instant-ngp and NeuS-variant loaders: known poses → files → loader → same poses."""

import json
import math
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
from conftest import REPO
from test_data import write_neus_scene

from neurecon.data import BlenderScene, DatasetError, NeuSScene, NGPScene
from neurecon.data.cameras import look_at
from neurecon.data.posed import GL_TO_CV

TARGET = np.array([0.3, -0.2, 0.1])
W, H = 32, 24


def _poses(n, centre=TARGET, dist=4.0):
    return [
        look_at(centre + dist * np.array([math.cos(a), math.sin(a), 0.5]), centre)
        for a in np.linspace(0, 2 * math.pi, n, endpoint=False)
    ]


def _rgba(rng):
    img = rng.integers(0, 255, (H, W, 4), dtype=np.uint8)
    img[..., 3] = 0
    img[6:18, 8:24, 3] = 255
    return img


def write_blender(root, n_train=4, n_test=3, angle=0.8):
    rng = np.random.default_rng(0)
    poses = {"train": _poses(n_train), "test": _poses(n_test, dist=3.5)}
    for split in ("train", "val", "test"):
        (root / split).mkdir(parents=True)
        frames = []
        for i, c2w in enumerate(poses.get(split, poses["test"])):
            iio.imwrite(root / split / f"r_{i}.png", _rgba(rng))
            frames.append(
                {"file_path": f"./{split}/r_{i}", "transform_matrix": (c2w @ GL_TO_CV).tolist()}
            )  # OpenCV → OpenGL
        (root / f"transforms_{split}.json").write_text(
            json.dumps({"camera_angle_x": angle, "frames": frames})
        )
    return poses


def test_blender_round_trip(tmp_path):
    poses = write_blender(tmp_path)
    s = BlenderScene(str(tmp_path), radius=1.5, background_color=(1, 1, 1))
    assert s.images.shape == (7, H, W, 3) and s.train_ids.tolist() == [0, 1, 2, 3]
    f = 0.5 * W / math.tan(0.4)
    assert np.allclose(
        s.K[0].numpy(), [[f, 0, (W - 1) / 2], [0, f, (H - 1) / 2], [0, 0, 1]], atol=1e-4
    )
    for i, c2w in enumerate(poses["train"] + poses["test"]):
        assert np.allclose(s.c2w[i, :3, :3].numpy(), c2w[:3, :3], atol=1e-6)
        assert np.allclose(s.c2w[i, :3, 3].numpy(), c2w[:3, 3] / 1.5, atol=1e-6)
    # Transparent pixels show the background; alpha becomes the mask.
    assert (s.images[0, 0, 0] == 255).all() and not s.mask(0)[0, 0] and s.mask(0)[10, 10]


def write_ngp(root, per_frame=False, missing=(), distortion=None):
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    intr = {"fl_x": 30.0, "fl_y": 31.0, "cx": 16.5, "cy": 12.0, "w": W, "h": H}
    meta = {"aabb_scale": 4, "frames": []}
    if not per_frame:
        meta.update(intr)
    for i, c2w in enumerate(_poses(8)):
        fr = {"file_path": f"images/{i:04d}.png", "transform_matrix": (c2w @ GL_TO_CV).tolist()}
        if per_frame:
            fr.update(intr)
        if distortion and i == 2:
            fr.update(distortion)
        if i not in missing:
            iio.imwrite(root / fr["file_path"], _rgba(rng)[..., :3])
        meta["frames"].append(fr)
    (root / "transforms.json").write_text(json.dumps(meta))
    return _poses(8)


@pytest.mark.parametrize("per_frame", [False, True])
def test_ngp_round_trip(tmp_path, per_frame):
    poses = write_ngp(tmp_path, per_frame=per_frame)
    s = NGPScene(str(tmp_path))
    assert np.allclose(s.K[0].numpy(), [[30, 0, 16.0], [0, 31, 11.5], [0, 0, 1]], atol=1e-5)
    # All cameras look at TARGET: it becomes the centre; radius = half the camera distance.
    assert np.allclose(s.to_world[:3, 3], TARGET, atol=1e-6)
    assert np.isclose(s.to_world[0, 0], 0.5 * 4.0 * math.sqrt(1.25))
    for i, c2w in enumerate(poses):
        assert np.allclose(s.c2w[i, :3, :3].numpy(), c2w[:3, :3], atol=1e-6)
        back = s.to_world_points(s.c2w[i, :3, 3].double().numpy()[None])[0]
        assert np.allclose(back, c2w[:3, 3], atol=1e-5)


def test_ngp_missing_frames_are_skipped_and_reported(tmp_path, caplog):
    write_ngp(tmp_path, missing=(3, 5))
    s = NGPScene(str(tmp_path))
    assert s.num_views == 6
    assert "2 frame image(s) missing" in caplog.text and "0003.png" in caplog.text


@pytest.mark.parametrize(
    ("distortion", "message"),
    [
        ({"k1": 0.1, "k4": 0.01}, "frame 2: k4 without is_fisheye"),
        ({"k1": 0.1, "p1": 0.01, "is_fisheye": True}, "frame 2: fisheye with tangential"),
    ],
)
def test_ngp_unsupported_lens_models_are_named(tmp_path, distortion, message):
    write_ngp(tmp_path, distortion=distortion)
    with pytest.raises(DatasetError, match=message):
        NGPScene(str(tmp_path))


def test_neus_custom_cameras_npz_and_all_255_masks(tmp_path):
    write_neus_scene(tmp_path)
    (tmp_path / "cameras_sphere.npz").rename(tmp_path / "cameras.npz")
    for p in (tmp_path / "mask").iterdir():
        iio.imwrite(p, np.full((24, 32, 3), 255, np.uint8))
    s = NeuSScene(str(tmp_path), cameras="auto", use_mask="auto")
    assert s.masks is None and s.num_views == 4


def test_neus_custom_without_mask_folder(tmp_path):
    write_neus_scene(tmp_path)
    for p in (tmp_path / "mask").iterdir():
        p.unlink()
    (tmp_path / "mask").rmdir()
    assert NeuSScene(str(tmp_path), use_mask="auto").masks is None
    with pytest.raises(DatasetError, match="mask does not exist"):
        NeuSScene(str(tmp_path), use_mask=True)


QUICK = [
    "trainer.max_steps=5",
    "trainer.batch_rays=64",
    "callbacks.validate.every=0",
    "callbacks.checkpoint.every=0",
    "eval.mesh_resolution=32",
    "trainer.progress=false",
    "trainer.device=cpu",
    "renderer.n_samples=16",
    "renderer.n_importance=16",
    # As conftest.TINY: LPIPS (JAX and its weights, per process) runs in test_train's CLI run;
    # mesh.png at 128 px.
    "eval.metrics.lpips.net=null",
    "eval.picture_size=128",
]


@pytest.mark.parametrize("fmt", ["blender", "ngp", "neus", "blendedmvs", "dtu", "colmap", "llff"])
def test_each_format_trains_from_the_command_line(tmp_path, fmt):
    data = tmp_path / "data"
    if fmt == "colmap":
        pytest.importorskip("pycolmap")
        from test_colmap import write_colmap

        data.mkdir()
        write_colmap(data)
    else:
        writers = {"blender": write_blender, "ngp": write_ngp, "llff": write_llff}
        writers.get(fmt, write_neus_scene)(data)
    extra = ["dataset.factor=4"] if fmt == "llff" else []
    res = subprocess.run(
        [
            sys.executable,
            "train.py",
            f"hydra.run.dir={tmp_path / 'run'}",
            f"dataset={fmt}",
            f"dataset.root={data}",
            *QUICK,
            *extra,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert np.isfinite(m["test/psnr"]) and (tmp_path / "run" / "mesh.ply").is_file()


def write_llff(root, n=9, factor=4):
    """poses_bounds.npy for full-res 4W x 4H images, and images_4/ at W x H."""
    rng = np.random.default_rng(2)
    (root / f"images_{factor}").mkdir(parents=True)
    poses = [
        look_at(
            np.array([0.3 * i - 1.2, 0.1 * (i % 3), -4.0]),
            np.array([0.0, 0.0, 0.0]),
            up=(0.0, -1.0, 0.0),
        )
        for i in range(n)
    ]
    rows = []
    for i, c2w in enumerate(poses):
        R, t = c2w[:3, :3], c2w[:3, 3]
        drb = np.stack([R[:, 1], R[:, 0], -R[:, 2]], 1)  # [down, right, back]
        hwf = np.array([H * factor, W * factor, 120.0])
        rows.append(np.r_[np.c_[drb, t, hwf].ravel(), 2.0, 6.0])
        iio.imwrite(
            root / f"images_{factor}" / f"IMG_{i:03d}.JPG",
            rng.integers(0, 255, (H, W, 3), dtype=np.uint8),
        )
    np.save(root / "poses_bounds.npy", np.array(rows))
    return poses


def test_llff_round_trip(tmp_path):
    from neurecon.data import LLFFScene

    poses = write_llff(tmp_path)
    s = LLFFScene(str(tmp_path), factor=4)
    assert s.test_ids.tolist() == [0, 8] and len(s.train_ids) == 7
    assert np.allclose(s.K[0].numpy(), [[30, 0, (W - 1) / 2], [0, 30, (H - 1) / 2], [0, 0, 1]])
    for i, c2w in enumerate(poses):
        assert np.allclose(s.c2w[i, :3, :3].numpy(), c2w[:3, :3], atol=1e-6)
        back = s.to_world_points(s.c2w[i, :3, 3].double().numpy()[None])[0]
        assert np.allclose(back, c2w[:3, 3], atol=1e-5)
    # The region of interest lies in front of the cameras, between the bounds.
    centre = s.to_world[:3, 3]
    assert 2.0 < np.linalg.norm(centre - poses[4][:3, 3]) < 6.0
