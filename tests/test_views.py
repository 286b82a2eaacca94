"""Scoring rendered views: the PSNR rule on masked scenes, and the end-of-run summary."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY, compose_cfg
from torch import nn

from neurecon.build import build
from neurecon.errors import ConfigError
from neurecon.eval import EvalSettings, score_views
from neurecon.eval.summary import run_summary
from neurecon.render.common import RenderOutput


class PerfectRenderer(nn.Module):
    """Renders the built-in scene exactly: the object, and the background colour elsewhere."""

    background_color = None

    def __init__(self, scene) -> None:
        super().__init__()
        self.scene = scene

    def forward(self, field, origins, dirs, background_color):
        rgb, hit = self.scene.render_rays(origins, dirs)
        opacity = hit.float()
        return RenderOutput(rgb, opacity, opacity, torch.zeros_like(rgb))


@pytest.fixture
def masked_scene_on_a_table():
    """The built-in masked scene, its photos' background replaced by a texture (as DTU's
    photos keep their table and wall while training renders the object over black)."""
    scene = build(compose_cfg([*TINY, "dataset.num_views=6"])).scene
    rng = np.random.default_rng(0)
    outside = scene.masks <= 127  # flat, one value per pixel
    scene.pixels[outside] = torch.tensor(
        rng.integers(0, 256, (int(outside.sum()), 3)), dtype=torch.uint8
    )
    return scene


def _score(scene, use_mask, folder):
    settings = EvalSettings(chunk=512, progress=False, use_mask=use_mask)
    del settings.metrics["lpips"]
    views = scene.test_ids.tolist()
    res, _, _ = score_views(
        scene, nn.Identity(), PerfectRenderer(scene), views, settings, folder, "test",
        [f"{v}.png" for v in views], validation=True,
    )  # fmt: skip
    return res


def test_a_perfect_render_of_a_masked_scene_scores_the_maximum(masked_scene_on_a_table, tmp_path):
    res = _score(masked_scene_on_a_table, "auto", tmp_path)
    # Only uint8 rounding of the photos separates the render from the reference.
    assert res["test/psnr"] > 50 and res["test/psnr_masked"] > 50
    assert res["test/psnr_photo"] < 15  # the photo's own background is not the object
    assert res["test/ssim"] > 0.99


def test_without_masks_the_photo_is_the_reference(masked_scene_on_a_table, tmp_path):
    res = _score(masked_scene_on_a_table, False, tmp_path)  # trainer.use_mask=false
    assert res["test/psnr"] < 15 and "test/psnr_photo" not in res


def test_the_run_summary_says_where_the_mesh_and_its_picture_are(tmp_path):
    m = {"status": "completed", "steps": 1200, "train_time_s": 130.2, "eval_time_s": 21.0,
         "total_time_s": 151.2, "test/psnr": 35.457, "test/psnr_masked": 33.3, "test/ssim": 0.98,
         "chamfer/mean": 0.0097, "chamfer/relative": 0.0061, "chamfer/fscore": 0.93,
         "mesh": "mesh.ply", "mesh/vertices": 34512, "mesh_picture": "mesh.png"}  # fmt: skip
    text = run_summary(m, tmp_path)
    assert text.splitlines()[0] == (
        "run completed: 1200 steps in 2 min 31 s (training 2 min 10 s, evaluation 21 s)"
    )
    assert "test PSNR 35.46 dB, PSNR object 33.30 dB, SSIM 0.980" in text
    assert "Chamfer 0.0097 (0.61 % of the object radius), F-score 0.930" in text
    assert f"{tmp_path / 'mesh.ply'}  (34,512 vertices)" in text
    assert str(tmp_path / "mesh.png") in text and str(tmp_path / "metrics.json") in text


class DepthRenderer(PerfectRenderer):
    """The exact surface distance as the render's depth, plus ``offset`` (frame units)."""

    def __init__(self, scene, offset: float = 0.0) -> None:
        super().__init__(scene)
        self.offset = offset

    def forward(self, field, origins, dirs, background_color):
        from neurecon.data.synthetic import sphere_trace

        x, hit = sphere_trace(self.scene.sdf, origins, dirs)
        opacity = hit.float()
        depth = ((x - origins).norm(dim=-1) + self.offset) * opacity  # depth sums w·t
        rgb = torch.zeros_like(origins)
        return RenderOutput(rgb, opacity, depth, torch.zeros_like(rgb))


@pytest.mark.parametrize("offset", [0.0, 0.02])
def test_sfm_depth_of_an_exact_render_is_its_offset_in_world_units(offset, tmp_path):
    from neurecon.data.cameras import pixel_rays
    from neurecon.data.synthetic import sphere_trace

    scene = build(compose_cfg([*TINY, "dataset.num_views=6"])).scene
    view = int(scene.test_ids[0])
    # Points on the true surface where the view's pixel centres see it (so rounding to the
    # nearest pixel costs nothing), in the world frame as a loader gives them.
    H, W = scene.size(view)
    flat = torch.arange(H * W)
    o, d = pixel_rays(scene.K[view], scene.c2w[view], (flat % W).float(), (flat // W).float())
    x, hit = sphere_trace(scene.sdf, o, d)
    scene.set_sfm_points(scene.to_world_points(x[hit][::3].numpy().astype(np.float64)))
    settings = EvalSettings(chunk=512, progress=False)
    settings.metrics = {"sfm_depth": settings.metrics["sfm_depth"]}
    res, _, _ = score_views(
        scene, nn.Identity(), DepthRenderer(scene, offset), [view], settings, tmp_path, "test",
        [f"{view}.png"],
    )  # fmt: skip
    scale = scene.to_world[0, 0]
    assert scale != 1.0  # the built-in scene's world frame is scaled: the units matter
    assert res["test/sfm_depth"] == pytest.approx(offset * scale, abs=1e-3 * scale)


def test_the_mesh_picture_has_the_configured_size_or_is_left_out(tmp_path):
    """``eval.picture_size``: mesh.png's three panels at that many pixels a side; 0: none
    (and no ``mesh_picture`` in metrics.json), the mesh itself still written."""
    import imageio.v3 as iio

    from neurecon.eval import evaluate_run

    run = build(compose_cfg([*TINY, "dataset.num_views=6", "dataset.shape=sphere"]))
    for size in (40, 0):
        out = tmp_path / str(size)
        settings = EvalSettings(mesh_resolution=24, picture_size=size, progress=False)
        del settings.metrics["lpips"]
        m = evaluate_run(run.scene, run.field, run.renderer, out, settings)
        assert (out / "mesh.ply").is_file() and m["mesh/vertices"] > 0
        if size:
            assert iio.imread(out / "mesh.png").shape == (40, 120, 3)
            assert m["mesh_picture"] == "mesh.png"
        else:
            assert not (out / "mesh.png").exists() and "mesh_picture" not in m
    with pytest.raises(ConfigError, match=r"eval\.picture_size"):
        EvalSettings(picture_size=8)
