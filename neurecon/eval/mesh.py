"""The mesh a run takes home (world coordinates) and its metrics against ground truth."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import trimesh
from torch import nn

from neurecon.data.scene import Scene
from neurecon.errors import MeshExtractionError
from neurecon.eval.outputs import MeshOptions, export_mesh, write_mesh
from neurecon.eval.settings import EvalSettings

log = logging.getLogger(__name__)


def mesh_metrics(
    scene: Scene, field: nn.Module, out: Path, settings: EvalSettings
) -> tuple[dict[str, Any], trimesh.Trimesh | None]:
    """Extract ``out/mesh.ply`` in world coordinates with vertex colours
    (:func:`~neurecon.eval.outputs.export_mesh`) and score it with the mesh metrics of
    ``settings.metrics`` (Chamfer against the scene's ground truth, the DTU protocol when
    configured). Returns the metrics and the mesh (None without a mesh; ``mesh_error`` says
    why)."""
    if not settings.mesh_resolution:
        return {}, None
    try:
        mesh = export_mesh(scene, field, settings, MeshOptions(settings.mesh_resolution))
    except MeshExtractionError as e:
        log.error("mesh extraction: %s", e)
        return {"mesh_error": str(e)}, None
    write_mesh(mesh, out / "mesh.ply")
    res: dict[str, Any] = {"mesh": "mesh.ply", "mesh/vertices": len(mesh.vertices)}
    for metric in settings.mesh_metrics():
        res.update(metric.compute(scene, mesh, settings.seed))
    return res, mesh
