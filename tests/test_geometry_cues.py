"""Geometry cues beyond colour (Geo-NeuS): the sparse-point SDF term and multi-view photometric
consistency as loss terms, on real fields and scenes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import TINY, compose_cfg

from neurecon.build import build
from neurecon.errors import ConfigError
from neurecon.losses import PhotoConsistencyLoss, SparsePointsLoss

SPHERE = [*TINY, "dataset.shape=sphere", "callbacks.log.every=5"]


def test_start_step_then_warmup_ramps_from_zero():
    term = PhotoConsistencyLoss(weight=0.2, start_step=10, warmup_steps=10)
    assert [term.weight_at(s) for s in (0, 9, 10)] == [0.0, 0.0, 0.0]
    assert math.isclose(term.weight_at(15), 0.1) and term.weight_at(20) == 0.2
    assert SparsePointsLoss(weight=0.3).weight_at(0) == 0.3  # no schedule: on from the start
    with pytest.raises(ConfigError, match="start_step"):
        SparsePointsLoss(start_step=-1)
    with pytest.raises(ConfigError, match="keep"):
        PhotoConsistencyLoss(source_views=2, keep=3)


def test_sparse_points_pull_the_zero_level_set_onto_them():
    run = build(compose_cfg(SPHERE))
    scene, field = run.scene, run.field
    term = SparsePointsLoss(weight=1.0, points_per_step=256)
    term.bind(scene, field)
    assert term.value(None, None, None) is None  # a scene without SfM points: no term
    # Points on a sphere of radius 0.35 about an offset centre, given in the world frame as
    # a loader gives them; the field starts as its own sphere, elsewhere.
    rng = np.random.default_rng(0)
    d = rng.normal(size=(2000, 3))
    local = np.array([0.2, -0.1, 0.1]) + 0.35 * d / np.linalg.norm(d, axis=1, keepdims=True)
    scene.set_sfm_points(scene.to_world_points(local))
    assert torch.allclose(scene.sfm_points.double(), torch.from_numpy(local), atol=1e-5)
    term.bind(scene, field)
    pts = scene.sfm_points
    before = field.sdf(pts).abs().mean().item()
    opt = torch.optim.Adam(field.parameters(), lr=5e-3)
    for _ in range(150):
        opt.zero_grad()
        term.value(None, None, None).backward()
        opt.step()
    after = field.sdf(pts).abs().mean().item()
    assert before > 0.05 and after < before / 4, (before, after)


def test_photo_consistency_trains_from_config_and_logs_its_value(tmp_path):
    cfg = compose_cfg([*SPHERE, "trainer.max_steps=10", "+loss/photo=typed",
                       "loss.photo.start_step=0", "loss.photo.min_opacity=0.1",
                       "+loss/sparse_points=typed"])  # fmt: skip
    run = build(cfg)
    assert list(run.trainer.loss_terms)[-2:] == ["photo", "sparse_points"]
    assert isinstance(run.trainer.loss_terms["photo"], PhotoConsistencyLoss)
    m = run.trainer.fit(run.scene, run.field, run.renderer, run.optimizer, tmp_path)
    assert m["status"] == "completed"
    rows = [r for r in run.trainer.history if "loss/photo" in r]
    # 1 - NCC lies in [0, 2]; the synthetic scene has no SfM points: no sparse-point value.
    assert rows and all(0 <= r["loss/photo"] <= 2 for r in rows)
    assert not any("loss/sparse_points" in r for r in run.trainer.history)


def test_the_built_in_scene_reads_sparse_points_from_dataset_points(tmp_path):
    """The built-in scene renders no points of its own; ``dataset.points`` gives it a world-frame
    PLY (what ``prepare --triangulate`` writes), read into the normalised frame the field sees."""
    import trimesh

    from neurecon.data import DatasetError

    truth = build(compose_cfg(SPHERE)).scene
    world = truth.gt_points[:300]  # exact surface points, world frame
    ply = tmp_path / "points3D.ply"
    trimesh.PointCloud(world).export(ply)
    run = build(compose_cfg([*SPHERE, "trainer.max_steps=10", f"dataset.points={ply}",
                             "+loss/sparse_points=typed"]))  # fmt: skip
    pts = run.scene.sfm_points
    assert pts is not None and len(pts) == 300
    assert run.scene.sdf(pts).abs().max() < 1e-4  # on the true surface: the frame is right
    m = run.trainer.fit(run.scene, run.field, run.renderer, run.optimizer, tmp_path / "run")
    assert m["status"] == "completed"
    rows = [r["loss/sparse_points"] for r in run.trainer.history if "loss/sparse_points" in r]
    assert rows and all(0 <= v < 1 for v in rows), run.trainer.history
    with pytest.raises(DatasetError, match=r"nowhere\.ply is missing"):
        build(compose_cfg([*SPHERE, f"dataset.points={tmp_path / 'nowhere.ply'}"]))
