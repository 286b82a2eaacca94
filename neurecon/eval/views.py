"""Rendering whole views and scoring them against the photos."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from neurecon.atomic import atomic_write
from neurecon.data.cameras import pixel_rays
from neurecon.data.scene import Scene
from neurecon.eval.settings import EvalSettings
from neurecon.memory import retry_on_oom
from neurecon.metrics.depth import frame_scale, surface_depth
from neurecon.metrics.nodes import MetricUnavailable, ViewImages

log = logging.getLogger(__name__)


@torch.no_grad()
def render_view(
    scene: Scene,
    field: nn.Module,
    renderer: nn.Module,
    view: int,
    chunk: int,
    device: torch.device,
) -> tuple[dict[str, np.ndarray], int]:
    """Full-image render of a scene's view in chunks of ``chunk`` rays (peak memory independent
    of image size). Returns the images — (H, W, 3) ``color`` / ``normal``, (H, W) ``opacity`` /
    ``depth`` — and the chunk that worked (it halves on out-of-memory; callers keep it)."""
    return render_camera(
        field, renderer, scene.K[view], scene.c2w[view], scene.size(view),
        scene.background_color, chunk, device, f"rendering view {view}",
    )  # fmt: skip


@torch.no_grad()
def render_camera(
    field: nn.Module,
    renderer: nn.Module,
    K: Tensor | np.ndarray,
    c2w: Tensor | np.ndarray,
    hw: tuple[int, int],
    background_color: Tensor,
    chunk: int,
    device: torch.device,
    what: str = "rendering a view",
) -> tuple[dict[str, np.ndarray], int]:
    """Like :func:`render_view`, for any pinhole camera: K (3, 3), c2w (4, 4) in the normalised
    frame, ``hw`` = (H, W); rays through pixel centres, row-major, as the scene's own."""
    field.eval()
    renderer.eval()
    H, W = (int(n) for n in hw)
    Kt, ct = (torch.as_tensor(a, dtype=torch.float32) for a in (K, c2w))
    bg = background_color.to(device)

    def render(chunk: int) -> dict[str, np.ndarray]:
        # Written in place chunk by chunk: no list of parts and no concatenated copy.
        img = {k: np.zeros((H * W, 3), np.float32) for k in ("color", "normal")}
        img.update({k: np.zeros(H * W, np.float32) for k in ("opacity", "depth")})
        for start in range(0, H * W, chunk):
            flat = torch.arange(start, min(start + chunk, H * W))
            o, d = pixel_rays(Kt, ct, (flat % W).float(), (flat // W).float())
            r = renderer(field, o.to(device), d.to(device), bg)
            sl = slice(start, start + len(flat))
            img["color"][sl] = r.color.float().cpu().numpy()
            img["opacity"][sl] = r.opacity.float().cpu().numpy()
            img["depth"][sl] = r.depth.float().cpu().numpy()
            if r.normal is not None:
                img["normal"][sl] = r.normal.float().cpu().numpy()
        return {k: v.reshape(H, W, *v.shape[1:]) for k, v in img.items()}

    return retry_on_oom(render, chunk, what)


def composite_background(scene: Scene, renderer: nn.Module) -> np.ndarray | None:
    """(3,) the colour a masked scene's render shows outside the object (the renderer's own
    ``background_color`` when set, else the scene's), or None when the scene has no masks."""
    if scene.masks is None:
        return None
    own = getattr(renderer, "background_color", None)
    return (own if own is not None else scene.background_color).numpy().astype(np.float32)


def score_views(
    scene: Scene,
    field: nn.Module,
    renderer: nn.Module,
    views: list[int],
    settings: EvalSettings,
    folder: Path,
    prefix: str,
    names: list[str],
    validation: bool = False,
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, np.ndarray]]:
    """The view metrics of ``settings.metrics`` (:class:`~neurecon.metrics.nodes.ViewMetric`;
    at ``validation`` those marked ``at_validation``) on ``views``; writes ``pred | gt |
    normal`` panels to ``folder/names[i]``. Returns the means as ``{prefix}/{name}``, the
    per-view rows and the panels. Pixels without source data (``scene.valid_mask``) are not
    scored. ``settings.chunk`` is updated when rendering had to shrink it.

    The reference (the PSNR rule): a run trained with masks renders the object over the
    background colour, and its photos keep their own background (DTU's table and wall, the NeuS
    release's white). So the reference is the photo composited onto the render's background
    colour with the mask (as instant-nsr-pl does): ``psnr`` / ``ssim`` / ``lpips`` score the
    object, and a perfect render scores the maximum whatever the photo's background.
    ``psnr_photo`` keeps the comparison with the untouched photo, ``psnr_masked`` the object's
    pixels only. Without masks the photo is the reference."""
    per_view, panels, missing = [], {}, {}
    metrics = settings.view_metrics(validation)
    bg = composite_background(scene, renderer) if settings.use_mask is not False else None
    points = None if scene.sfm_points is None else scene.sfm_points.cpu().numpy()
    scale = frame_scale(scene.to_world)
    for v, name in tqdm(
        list(zip(views, names, strict=True)), disable=not settings.progress, desc="render",
        leave=False,
    ):  # fmt: skip
        img, settings.chunk = render_view(
            scene, field, renderer, v, settings.chunk, settings.device
        )
        photo, m, valid = scene.image(v), scene.mask(v), scene.valid_mask(v)
        gt = photo if bg is None or m is None else np.where(m[..., None], photo, bg)
        pred = np.clip(img["color"], 0, 1)
        if valid is not None:  # no source data there (undistortion): not scored
            pred = np.where(valid[..., None], pred, gt)  # SSIM / LPIPS see no error there
            m = None if m is None else m & valid
        view = ViewImages(
            pred, gt, photo, m, valid, depth=surface_depth(img["depth"], img["opacity"]),
            K=scene.K[v].cpu().numpy(), c2w=scene.c2w[v].cpu().numpy(), points=points, scale=scale,
        )  # fmt: skip
        row: dict[str, Any] = {"view": v}
        for metric in metrics:
            if metric.name in missing:
                continue
            try:
                value = metric.score(view)
            except MetricUnavailable as e:  # reported as missing, never made up
                missing[metric.name] = str(e)
                log.warning("%s", e)
                continue
            if value is not None:
                row[metric.name] = value
        per_view.append(row)
        normal = (img["normal"] * 0.5 + 0.5) * img["opacity"][..., None]
        panel = np.concatenate([pred, gt, np.clip(normal, 0, 1)], axis=1)
        panels[f"val/view_{v:03d}"] = panel
        atomic_write(folder / name, lambda p, a=panel: iio.imwrite(p, (a * 255).astype(np.uint8)))
    res: dict[str, Any] = {}
    for metric in metrics:
        vals = [r[metric.name] for r in per_view if metric.name in r]
        if vals:
            res[f"{prefix}/{metric.name}"] = float(np.mean(vals))
    res.update({f"{name}_missing": why for name, why in missing.items()})
    return res, per_view, panels
