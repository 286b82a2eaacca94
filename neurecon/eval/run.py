"""The end of a run: test views, mesh and metrics, written to ``metrics.json``."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import trimesh
from torch import nn

from neurecon.atomic import check_inside, write_json
from neurecon.data.scene import Scene
from neurecon.eval.mesh import mesh_metrics
from neurecon.eval.outputs import scale_rotation, turntable_video
from neurecon.eval.settings import EvalSettings
from neurecon.eval.summary import run_summary
from neurecon.eval.views import score_views
from neurecon.geometry.picture import frame_from_cameras, mesh_picture

log = logging.getLogger(__name__)
# mesh.png: the side the cameras saw, then 60° to either side, a little from above.
CAPTURE_VIEWS = ((0.0, 20.0), (60.0, 20.0), (-60.0, 20.0))


def _capture_frame(scene: Scene, mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
    """(up, front) of the world-frame mesh's pictures from the scene's cameras, so that a real
    scan is drawn upright from the side it was captured (its world frame has no up)."""
    scale, rot = scale_rotation(scene.to_world)
    c2w = scene.c2w.double().numpy()[:, :3]
    axes = rot @ c2w[:, :, :3]  # world-frame camera axes
    centres = c2w[:, :, 3] @ (scale * rot).T + scene.to_world[:3, 3]
    v = np.asarray(mesh.vertices)
    return frame_from_cameras(np.concatenate([axes, centres[..., None]], -1), v.mean(0))


def evaluate_run(
    scene: Scene,
    field: nn.Module,
    renderer: nn.Module,
    out: str | Path,
    settings: EvalSettings,
    metrics: dict[str, Any] | None = None,
    logger: Any = None,
    step: int = 0,
) -> dict[str, Any]:
    """Test-view metrics (``test/*``), ``mesh.ply`` and Chamfer / DTU metrics, merged into
    ``metrics`` and written to ``out/metrics.json``. A field without a usable surface turns the
    status into ``degenerate``. ``logger`` (optional) receives the mesh."""
    out = Path(out)
    for name in (
        "test/view.png",
        "mesh.ply",
        "mesh_raw.ply",
        "mesh.png",
        "metrics.json",
    ):  # before any work
        check_inside(out / name)
    metrics = dict(metrics or {"status": "completed", "scene": scene.name})
    t0 = time.time()
    field.to(settings.device)
    renderer.to(settings.device)
    renderer.setup(settings.device)
    renderer.ensure_grid(field)  # a grid never refreshed would march every cell
    views = scene.test_ids.tolist()
    res, per_view, _ = score_views(
        scene, field, renderer, views, settings, out / "test", "test",
        [f"view_{v:03d}.png" for v in views],
    )  # fmt: skip
    metrics.update(res)
    metrics["test/per_view"] = per_view
    mres, mesh = mesh_metrics(scene, field, out, settings)
    metrics.update(mres)
    if mesh is not None and len(mesh.vertices):
        picture = None
        if settings.picture_size:
            up, front = _capture_frame(scene, mesh)
            picture = mesh_picture(mesh, out / "mesh.png", CAPTURE_VIEWS, settings.picture_size,
                                   up=up, front=front)  # fmt: skip
            metrics["mesh_picture"] = picture.name
        if logger is not None:
            colors = mesh.visual.vertex_colors if mesh.visual.kind == "vertex" else None
            logger.log_mesh(step, out / "mesh.ply", np.asarray(mesh.vertices), colors)
            if picture is not None:
                logger.log_images(step, {"mesh_picture": iio.imread(picture) / 255.0})
    if settings.video_frames > 0:
        video = turntable_video(
            scene, field, renderer, mesh, settings, out / "turntable.mp4", settings.video_frames
        )
        metrics["video"] = video.name
        if logger is not None:
            logger.log_video(step, "turntable", video)
    if "mesh_error" in metrics:  # finished, but the field has no usable surface
        metrics["status"] = "degenerate"
        metrics["error"] = metrics["mesh_error"]
    metrics["eval_time_s"] = time.time() - t0
    metrics["total_time_s"] = metrics.get("train_time_s", 0.0) + metrics["eval_time_s"]
    write_json(out / "metrics.json", metrics)
    log.info("%s", run_summary(metrics, out, settings.metrics))
    return metrics
