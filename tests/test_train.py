import json
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
import trimesh
from conftest import REPO, TINY, compose_cfg

from neurecon.build import build


def test_tiny_training_lowers_loss_and_reconstructs_offset_sphere(tmp_path):
    cfg = compose_cfg(
        [
            *TINY,
            "dataset.shape=sphere",
            "trainer.max_steps=300",
            "callbacks.log.every=25",
            "optimizer.lr=5e-3",
            "optimizer.lr_variance=2e-2",
            "loss.mask.weight=0.5",
            "eval.mesh_resolution=64",
        ]
    )
    run = build(cfg)
    m = run.trainer.fit(run.scene, run.field, run.renderer, run.optimizer, tmp_path)
    hist = run.trainer.history
    assert np.mean([h["loss"] for h in hist[-3:]]) < 0.5 * np.mean([h["loss"] for h in hist[:2]])
    # The initial sphere sits at the origin of the normalised frame; the target (radius 0.5) is
    # off-centre at (0.1, -0.05, 0.05) there, 0.3 world units away. Measured from the true centre,
    # an unmoved sphere's radii spread by ~0.17 world units; a correct one's by little.
    mesh = trimesh.load(tmp_path / "mesh.ply")
    scale = run.scene.to_world[0, 0]
    r = np.linalg.norm(
        mesh.vertices - run.scene.to_world_points(np.array([[0.1, -0.05, 0.05]])), axis=1
    )
    assert r.std() < 0.02 * scale, r.std()
    assert abs(r.mean() - 0.5 * scale) < 0.03 * scale, r.mean()
    assert m["chamfer/relative"] < 0.03, m  # ~0.018 measured over seeds 0-2; untrained ~0.12
    assert m["test/psnr"] > 20 and m["status"] == "completed"
    assert m["backend/march"] == "torch"  # the CPU march (nerfacc never on a CPU)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["chamfer/mean"] == pytest.approx(m["chamfer/mean"])


def _train_cli(tmp_path, *overrides, timeout=600):
    return subprocess.run(
        [sys.executable, "train.py", f"hydra.run.dir={tmp_path}", *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_run_writes_outputs_in_world_frame(tmp_path):
    res = _train_cli(
        tmp_path,
        *TINY,
        "trainer.max_steps=40",
        "callbacks.checkpoint.every=20",
        "eval.metrics.lpips.net=alex",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert np.isfinite(m["test/psnr"]) and "chamfer/mean" in m
    assert 0.0 <= m["test/lpips"] <= 1.0  # the default metrics include LPIPS
    assert (tmp_path / ".hydra" / "config.yaml").is_file()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step_0000020.ckpt",
        "step_0000040.ckpt",
    ]
    assert len(list((tmp_path / "test").glob("view_*.png"))) >= 1
    # Even a barely trained mesh must lie around the object (world offset (0.7, -0.4, 1.3),
    # scale 2.5), not around the origin of the normalised frame.
    mesh = trimesh.load(tmp_path / "mesh.ply")
    assert np.linalg.norm(mesh.bounding_box.centroid - np.array([0.7, -0.4, 1.3])) < 0.75
    assert mesh.extents.max() > 1.0


def test_cli_nerf_run_completes(tmp_path):
    res = _train_cli(
        tmp_path,
        *TINY,
        "field=nerf",
        "renderer=nerf",
        "trainer.max_steps=30",
        "renderer.n_samples=32",
        "renderer.n_importance=16",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert (np.isfinite(m["test/psnr"]) and "chamfer/mean" in m) or "mesh_error" in m


def test_cli_bad_input_is_a_clear_error_without_traceback(tmp_path):
    res = _train_cli(tmp_path, "dataset=dtu", f"dataset.root={tmp_path / 'nope'}")
    assert res.returncode == 2
    assert "does not exist" in res.stderr and "Traceback" not in res.stderr
    res = _train_cli(tmp_path, "optimizer.lr=-1")
    assert res.returncode == 2 and "optimizer.lr must be a finite number > 0" in res.stderr


def test_dtu_short_run_mesh_overlaps_scale_mat_sphere(dtu_scan65, tmp_path):
    res = _train_cli(
        tmp_path,
        "dataset=dtu",
        f"dataset.root={dtu_scan65}",
        "dataset.downscale=8",
        "dataset.test_every=49",  # one test view: an untrained field renders slowly
        "trainer.max_steps=40",
        "eval.metrics.lpips.net=null",
        "callbacks.validate.every=0",
        "eval.mesh_resolution=48",
        "trainer.progress=false",
        "trainer.device=cpu",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    cams = np.load(dtu_scan65 / "cameras_sphere.npz")
    scale = cams["scale_mat_0"]
    centre, radius = scale[:3, 3], scale[0, 0]
    mesh = trimesh.load(tmp_path / "mesh.ply")
    lo, hi = mesh.bounds
    assert np.all(hi > centre - radius) and np.all(lo < centre + radius)
    assert np.linalg.norm(mesh.vertices.mean(0) - centre) < radius


@pytest.mark.slow
def test_default_run_meets_its_targets(tmp_path):
    """`python train.py` as a new user runs it (about 5 min on 2 CPU cores)."""
    res = _train_cli(tmp_path, "logger=none", "trainer.progress=false", timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["test/psnr"] >= 25.0 and m["chamfer/relative"] <= 0.01, m


def _fit_sphere(tmp_path, *overrides):
    cfg = compose_cfg(
        [
            *TINY,
            "dataset.shape=sphere",
            "trainer.max_steps=200",
            "optimizer.lr=5e-3",
            "optimizer.lr_variance=2e-2",
            "loss.mask.weight=0.5",
            "eval.mesh_resolution=64",
            *overrides,
        ]
    )
    run = build(cfg)
    return run, run.trainer.fit(run.scene, run.field, run.renderer, run.optimizer, tmp_path)


def test_mixed_image_sizes_train_as_well_as_one_size(tmp_path):
    """Two sizes and two focal lengths (fov across the width), half the views portrait:
    rays use each view's own intrinsics, and validation renders each view at its own size."""
    run, mixed = _fit_sphere(tmp_path / "mixed", "dataset.image_sizes=[[40,56],[56,40]]")
    assert sorted({tuple(s) for s in run.scene.sizes.tolist()}) == [(40, 56), (56, 40)]
    assert run.scene.K[0, 0, 0] != run.scene.K[1, 0, 0]  # two focal lengths
    test_view = int(run.scene.test_ids[1])
    H, W = run.scene.size(test_view)
    panel = iio.imread(tmp_path / "mixed" / "test" / f"view_{test_view:03d}.png")
    assert panel.shape[:2] == (H, 3 * W)  # prediction | ground truth | normals at its own size
    print(f"Chamfer mixed {mixed['chamfer/relative']:.4f}")
    assert mixed["status"] == "completed" and np.isfinite(mixed["test/psnr"])
    # 200 steps leave seed noise: over trainer.seed=0,1,2 one size (dataset.resolution=48, the
    # same settings) gave 2.0-3.1 % and mixed sizes 2.1-3.6 %, while a view given another
    # view's intrinsics gives 14 %. (The one-size run is not repeated here: 30 s of the suite.)
    assert mixed["chamfer/relative"] <= 0.06
