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
from neurecon.geometry.clean import clean_by_hull

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
    res: dict[str, Any] = {"mesh": "mesh.ply"}
    hull = scene.visual_hull(world=True)
    if hull is not None:  # floaters: the share of vertices some view puts outside its mask
        outside = hull.outside(mesh.vertices, settings.hull_dilate_px)
        res["mesh/outside_hull_raw"] = float(outside.mean()) if len(outside) else 0.0
        res["mesh/outside_hull"] = res["mesh/outside_hull_raw"]
        if settings.cleans_mesh():
            write_mesh(mesh, out / "mesh_raw.ply")
            res.update({"mesh_raw": "mesh_raw.ply", "mesh/vertices_raw": len(mesh.vertices)})
            mesh = clean_by_hull(mesh, outside, settings.min_component)
            if not len(mesh.faces):
                return {**res, "mesh_error": "no face of the mesh is inside the masks"}, None
            # Every vertex of a kept face is inside the hull (clean_by_hull keeps no other).
            res["mesh/outside_hull"] = 0.0
    write_mesh(mesh, out / "mesh.ply")
    res["mesh/vertices"] = len(mesh.vertices)
    for metric in settings.mesh_metrics():
        res.update(metric.compute(scene, mesh, settings.seed))
    return res, mesh
