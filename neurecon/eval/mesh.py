"""The mesh a run takes home (world coordinates) and its metrics against ground truth."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import trimesh
from torch import nn

from neurecon.data.scene import Scene
from neurecon.errors import ConfigError, MeshExtractionError, MissingDependencyError
from neurecon.eval.export import MeshOptions, export_mesh, write_mesh
from neurecon.eval.settings import EvalSettings
from neurecon.metrics import mesh_chamfer
from neurecon.metrics.dtu import evaluate_dtu_mesh, protocol

log = logging.getLogger(__name__)


def mesh_metrics(
    scene: Scene, field: nn.Module, out: Path, settings: EvalSettings
) -> tuple[dict[str, Any], trimesh.Trimesh | None]:
    """Extract ``out/mesh.ply`` in world coordinates with vertex colours
    (:func:`~neurecon.eval.export.export_mesh`); Chamfer against the ground truth when the
    scene has one, the DTU protocol when configured. Returns the metrics and the mesh (None
    without a mesh; ``mesh_error`` says why)."""
    if not settings.mesh_resolution:
        return {}, None
    try:
        mesh = export_mesh(scene, field, settings, MeshOptions(settings.mesh_resolution))
    except MeshExtractionError as e:
        log.error("mesh extraction: %s", e)
        return {"mesh_error": str(e)}, None
    write_mesh(mesh, out / "mesh.ply")
    res: dict[str, Any] = {"mesh": "mesh.ply", "mesh/vertices": len(mesh.vertices)}
    if scene.gt_points is not None and len(mesh.faces):
        gt = scene.gt_points
        radius = float(np.linalg.norm(gt - gt.mean(0), axis=1).max())
        try:
            cd = mesh_chamfer(
                mesh, gt, settings.chamfer_threshold * radius, n=settings.chamfer_points,
                seed=settings.seed, gt_mesh=scene.gt_mesh,
            )  # fmt: skip
        except MissingDependencyError as e:  # the mesh and the other metrics still count
            log.error("Chamfer: %s", e)
            res["chamfer_error"] = str(e)
        else:
            res.update({f"chamfer/{k}": v for k, v in cd.items()})
            res["chamfer/object_radius"] = radius
            res["chamfer/relative"] = cd["mean"] / radius
    if settings.metrics["dtu_gt_root"]:
        res.update(dtu_metrics(scene, mesh, settings.metrics))
    return res, mesh


def dtu_metrics(scene: Scene, mesh: trimesh.Trimesh, opts: dict[str, Any]) -> dict[str, Any]:
    """The DTU protocol (``metrics.dtu_*`` options) on a world-frame mesh."""
    scan = opts["dtu_scan"]
    if scan is None:
        found = re.search(r"scan(\d+)", scene.name)
        if not found:
            raise ConfigError(f"metrics.dtu_scan is not set and scene {scene.name!r} names none")
        scan = int(found.group(1))
    masks = None if scene.masks is None else [scene.mask(v) for v in range(scene.num_views)]
    d = evaluate_dtu_mesh(
        mesh,
        opts["dtu_gt_root"],
        int(scan),
        world_mats=scene.world_projections() if masks is not None else None,
        masks=masks,
        protocol_name=str(opts.get("dtu_protocol") or "neus"),
        dilate=opts.get("dtu_mask_dilate"),
        # the protocols' dilations are in pixels of the photos; the masks may be downscaled
        mask_scale=1.0 / float(getattr(scene, "downscale", 1)),
    )
    log.info("DTU protocol %s", protocol(d["protocol"]).describe())
    return {f"dtu/{k}": v for k, v in d.items()}
