"""neurecon.data.prepare: structure from motion on images rendered from a textured scene."""

import math
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
from conftest import REPO
from scipy.spatial import procrustes

from neurecon.data import NeuSScene, SyntheticScene

pytest.importorskip("pycolmap")


def _prepare(tmp_path):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "neurecon.data.prepare",
            str(tmp_path / "photos"),
            str(tmp_path / "scene"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_prepare_recovers_cameras_up_to_similarity(tmp_path):
    """Photos of two sizes a few pixels apart (as real captures are): a single shared camera
    would reject every other one (CAMERA_SINGLE_DIM_ERROR); all 20 must register."""
    truth = SyntheticScene(
        image_sizes=[[320, 320], [314, 326]],
        num_views=20,
        texture="noise",
        orbit_elevation_deg=30,
        cam_distance=1.9,
        num_gt_points=1000,
    )
    (tmp_path / "photos").mkdir()
    for i in range(truth.num_views):
        iio.imwrite(tmp_path / "photos" / f"IMG_{i:04d}.png", truth.image_u8(i))
    res = _prepare(tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "(2 size(s), one camera per size)" in res.stderr
    assert "registered 20 of 20 images" in res.stderr
    s = NeuSScene(str(tmp_path / "scene"), test_every=0, use_mask="auto")
    assert s.num_views == 20
    est = s.to_world_points(s.c2w[:, :3, 3].double().numpy())
    true = truth.to_world_points(truth.c2w[:, :3, 3].double().numpy())
    _, _, disparity = procrustes(true, est)  # after the best similarity transform
    assert disparity < 1e-3, disparity
    for i in (0, 1):  # each size keeps its own size and focal length
        W = truth.size(i)[1]
        assert s.size(i) == truth.size(i)
        assert abs(s.K[i, 0, 0].item() / (0.5 * W / math.tan(math.radians(22.5))) - 1) < 0.05
    # The scene is normalised: every camera outside the unit sphere, looking into it.
    assert (s.c2w[:, :3, 3].norm(dim=-1) > 1.0).all()
    # Never overwritten without asking.
    again = _prepare(tmp_path)
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_prepare_reports_how_many_images_registered(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "photos").mkdir()
    for i in range(4):  # unrelated noise: nothing to match
        iio.imwrite(tmp_path / "photos" / f"{i}.png", rng.integers(0, 255, (96, 96, 3), np.uint8))
    res = _prepare(tmp_path)
    assert res.returncode == 2
    assert "error: structure from motion registered" in res.stderr and "of 4 images" in res.stderr
    err = next(ln for ln in res.stderr.splitlines() if ln.startswith("error: "))
    assert "COLMAP said:" in err and "colmap.log" in err  # the cause COLMAP gave, not a guess
    print(err)
    assert "Traceback" not in res.stderr
