"""``python -m neurecon.data.prepare --triangulate``: sparse points from known cameras, checked
against the true surface of a rendered textured scene."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from neurecon.data import NeuSScene, SyntheticScene
from neurecon.data.prepare import main

pytest.importorskip("pycolmap")


@pytest.fixture(scope="module")
def textured(tmp_path_factory):
    """A textured mug (thin walls, a handle) in the NeuS format with masks: (truth, folder)."""
    args = dict(shape="mug", num_views=16, resolution=192, texture="noise",
                orbit_elevation_deg=30, cam_distance=1.9, num_gt_points=1000)  # fmt: skip
    truth = SyntheticScene(**args)
    root = tmp_path_factory.mktemp("triangulate") / "scene"
    assert main(["--builtin", str(root), *(f"{k}={v}" for k, v in args.items())]) == 0
    masks = sorted((root / "mask").iterdir())
    assert len(masks) == 16 and (iio.imread(masks[3]) == truth.mask(3)).all()
    return truth, root


def test_triangulated_points_lie_on_the_true_surface(textured, capsys):
    truth, root = textured
    assert main(["--triangulate", str(root), "--test-every", "8"]) == 0
    s = NeuSScene(str(root), test_every=8)  # reads points3D.ply (dataset.points=auto)
    assert s.sfm_points is not None and len(s.sfm_points) > 100, len(s.sfm_points)
    # In the normalised frame the true SDF is known: the points lie on its zero level set
    # (measured: 168 points, median 0.0019, 95 % 0.012, i.e. 0.5 % and 3 % of the mug's 0.4).
    err = truth.sdf(s.sfm_points).abs().numpy()
    assert np.median(err) < 0.004 and np.quantile(err, 0.95) < 0.02, np.quantile(err, [0.5, 0.95])
    # The world-frame file round-trips to the same frame as the scene's cameras.
    assert torch.allclose(s.c2w, truth.c2w, atol=1e-4)
    # Never overwritten without asking.
    assert main(["--triangulate", str(root)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_points_option_names_a_missing_file(textured):
    _, root = textured
    from neurecon.data import DatasetError

    with pytest.raises(DatasetError, match=r"dataset.points: .*nowhere\.ply is missing"):
        NeuSScene(str(root), points="nowhere.ply")
    assert NeuSScene(str(root), points=None).sfm_points is None


def test_builtin_names_a_bad_argument_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "scene"
    assert main(["--builtin", str(out), "shap=mug"]) == 2
    assert "unknown argument(s) ['shap']" in capsys.readouterr().err
    assert main(["--builtin", str(out), "resolution=abc"]) == 2
    assert "--builtin resolution=abc" in capsys.readouterr().err
    assert not out.exists()
