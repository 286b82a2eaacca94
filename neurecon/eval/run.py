"""The end of a run: test views, mesh and metrics, written to ``metrics.json``."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
from torch import nn

from neurecon.data.scene import Scene
from neurecon.eval.export import turntable_video
from neurecon.eval.mesh import mesh_metrics
from neurecon.eval.settings import EvalSettings
from neurecon.eval.summary import run_summary
from neurecon.eval.views import score_views
from neurecon.geometry.picture import mesh_picture
from neurecon.io import write_json

log = logging.getLogger(__name__)


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
    metrics = dict(metrics or {"status": "completed", "scene": scene.name})
    t0 = time.time()
    field.to(settings.device)
    renderer.to(settings.device)
    renderer.setup(settings.device)
    renderer.ensure_grid(field)  # a grid never refreshed would march every cell
    views = scene.test_ids.tolist()
    res, per_view, _ = score_views(
        scene, field, renderer, views, settings, out / "test", "test",
        [f"view_{v:03d}.png" for v in views], with_lpips=True,
    )  # fmt: skip
    metrics.update(res)
    metrics["test/per_view"] = per_view
    mres, mesh = mesh_metrics(scene, field, out, settings)
    metrics.update(mres)
    if mesh is not None and len(mesh.vertices):
        picture = mesh_picture(mesh, out / "mesh.png")  # three views, framed on the object
        metrics["mesh_picture"] = picture.name
        if logger is not None:
            colors = mesh.visual.vertex_colors if mesh.visual.kind == "vertex" else None
            logger.log_mesh(step, out / "mesh.ply", np.asarray(mesh.vertices), colors)
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
    log.info("%s", run_summary(metrics, out))
    return metrics
