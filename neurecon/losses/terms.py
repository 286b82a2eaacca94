"""Loss terms: the training objective is a mapping of named terms, each a ``_target_`` node
under ``loss:`` (``conf/loss/default.yaml``), each with a weight and an optional warm-up.

A new term is one class here (or in your own package) and one YAML node:
``+loss.smooth._target_=my_pkg.SmoothNormals +loss.smooth.weight=0.01``; ``~loss.mask`` drops
one. A term reads what it needs from the render output (:class:`~neurecon.render.RenderOutput`,
its ``extras`` included) and the batch; it returns None where it does not apply (no eikonal
value from a density field, no mask on an unmasked run). A field or renderer can add terms of
its own by defining ``loss_terms() -> dict[str, LossTerm]`` (as instant-nsr-pl sums a model's
``regularizations``).

A term that needs more than the batch's colours overrides :meth:`LossTerm.bind` (given the
scene and the field once, before training: SfM points, photos) and :meth:`LossTerm.value_for`
(given the whole :class:`~neurecon.data.rays.RayBatch`: its views and pixels). The geometry
cues of Geo-NeuS are such terms: :class:`SparsePointsLoss`, :class:`PhotoConsistencyLoss`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from neurecon.errors import ConfigError
from neurecon.losses.functional import (
    COLOR_LOSSES,
    COLOR_REDUCTIONS,
    color_loss,
    mask_loss,
    photo_consistency_loss,
    sparse_point_loss,
)


@dataclass
class LossTerm:
    """A weighted term: ``weight × value``. ``start_step``: the term is off before it (Geo-NeuS
    starts photo-consistency once a surface has formed); ``warmup_steps`` > 0 then ramps the
    weight linearly from 0 (instant-nsr-pl's scheduled ``lambda_*``).

    Subclasses implement :meth:`value`: out is the render of the batch's B rays, ``rgb`` (B, 3)
    its target colours, ``mask`` (B,) in {0, 1} when training uses masks, else None.
    """

    weight: float = 1.0
    warmup_steps: int = 0
    start_step: int = 0

    def __post_init__(self) -> None:
        if self.warmup_steps < 0 or self.start_step < 0:
            raise ConfigError(f"{type(self).__name__}: warmup_steps and start_step must be >= 0")

    def weight_at(self, step: int) -> float:
        if step < self.start_step:
            return 0.0
        if self.warmup_steps and step - self.start_step < self.warmup_steps:
            return self.weight * (step - self.start_step) / self.warmup_steps
        return self.weight

    def bind(self, scene: Any, field: Any) -> None:
        """Called once before training with the scene and the field (on the training device):
        a term that reads more than the batch keeps what it needs here. Default: nothing."""

    def value_for(self, out: Any, batch: Any, mask: Tensor | None) -> Tensor | None:
        """The value for ``batch`` (:class:`~neurecon.data.rays.RayBatch`: rays, colours,
        views and pixels); by default :meth:`value` of its colours."""
        return self.value(out, batch.rgb, mask)

    def value(self, out: Any, rgb: Tensor, mask: Tensor | None) -> Tensor | None:
        raise NotImplementedError


@dataclass
class ColorLoss(LossTerm):
    """The photometric term (:func:`~neurecon.losses.functional.color_loss`); with masks, over
    the foreground rays only. ``kind``: l1 | huber | mse; ``reduction``: mean over the 3
    channels, or their sum (NeuS)."""

    kind: str = "l1"
    reduction: str = "mean"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind not in COLOR_LOSSES:
            raise ConfigError(f"loss.color.kind={self.kind!r}; choose from {list(COLOR_LOSSES)}")
        if self.reduction not in COLOR_REDUCTIONS:
            raise ConfigError(
                f"loss.color.reduction={self.reduction!r}; choose from {list(COLOR_REDUCTIONS)}"
            )

    def value(self, out: Any, rgb: Tensor, mask: Tensor | None) -> Tensor:
        return color_loss(out.color, rgb, self.kind, mask, self.reduction)


@dataclass
class EikonalLoss(LossTerm):
    """``(|∇f| − 1)²`` averaged by the renderer over its samples and random points (SDF fields;
    None for a density field)."""

    weight: float = 0.1

    def value(self, out: Any, rgb: Tensor, mask: Tensor | None) -> Tensor | None:
        return out.eikonal


@dataclass
class MaskLoss(LossTerm):
    """Binary cross-entropy of the accumulated opacity against the object mask (masked runs)."""

    weight: float = 0.1

    def value(self, out: Any, rgb: Tensor, mask: Tensor | None) -> Tensor | None:
        return None if mask is None else mask_loss(out.opacity, mask)


@dataclass
class FreeSpaceLoss(LossTerm):
    """Space the masks' visual hull carved out of the occupancy grid is empty: the mean of
    ``relu(−f)`` over the renderer's random points that lie there (``extras["free_space"]``;
    None when nothing is carved). Without it an SDF may stay negative outside the hull, where no
    sample lands, and a ray entering the hull already "inside" renders opaque there: the hull's
    boundary becomes a surface and the mesh a shell of it (measured on DTU scan37)."""

    weight: float = 1.0

    def value(self, out: Any, rgb: Tensor, mask: Tensor | None) -> Tensor | None:
        return getattr(out, "extras", {}).get("free_space")


@dataclass
class SparsePointsLoss(LossTerm):
    """Geo-NeuS's explicit SDF supervision: structure-from-motion points lie on the zero level
    set, so ``mean |sdf(p)|`` over ``points_per_step`` of the scene's
    :attr:`~neurecon.data.scene.Scene.sfm_points` drawn each step (None for a scene without
    points, or a field without an SDF). Geo-NeuS draws the points the batch's view sees;
    batches here mix every training view, so the points are drawn from all of them."""

    weight: float = 0.1
    points_per_step: int = 1024

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.points_per_step < 1:
            raise ConfigError("loss.sparse_points.points_per_step must be >= 1")
        self._points: Tensor | None = None
        self._sdf: Any = None
        self._gen: torch.Generator | None = None

    def bind(self, scene: Any, field: Any) -> None:
        pts = getattr(scene, "sfm_points", None)
        if pts is None or getattr(field, "kind", None) != "sdf":
            self._points = self._sdf = None
            return
        device = next(field.parameters()).device
        self._points, self._sdf = pts.to(device), field.sdf
        self._gen = torch.Generator(device=device).manual_seed(0)

    def value(self, out: Any, rgb: Tensor, mask: Tensor | None) -> Tensor | None:
        if self._points is None:
            return None
        pts = self._points
        if len(pts) > self.points_per_step:
            idx = torch.randint(0, len(pts), (self.points_per_step,), generator=self._gen,
                                device=pts.device)  # fmt: skip
            pts = pts[idx]
        return sparse_point_loss(self._sdf(pts))


@dataclass
class PhotoConsistencyLoss(LossTerm):
    """Multi-view photometric consistency (Geo-NeuS; sdfstudio's ``patch_warping``): for each
    training ray with a surface (opacity > ``min_opacity``, in the mask when training uses
    masks), the (2·``half_patch`` + 1)² grey patch around its pixel is warped into
    ``source_views`` neighbouring training views through the homography of the rendered
    surface point's tangent plane (the SDF normal), and ``1 − NCC`` is taken over the best
    ``keep`` of them (Geo-NeuS's occlusion rule: a source that does not see the point scores
    worst and is left out). Rays whose reference patch is flat (variance < ``min_variance``),
    whose surface faces away from the camera, or whose warped patch leaves a source image are
    skipped (:func:`~neurecon.losses.functional.photo_consistency_loss`). The gradient reaches
    the geometry through the point and the normal. Off before ``start_step``: an early start
    locks in a wrong surface."""

    weight: float = 0.1
    start_step: int = 1000
    half_patch: int = 5
    source_views: int = 4
    keep: int = 2
    min_opacity: float = 0.5
    min_variance: float = 1e-4
    min_deg: float = 5.0
    max_deg: float = 45.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.half_patch < 1 or not 1 <= self.keep <= self.source_views:
            raise ConfigError("loss.photo: need half_patch >= 1 and 1 <= keep <= source_views")
        self._photos: list[Tensor] | None = None

    def bind(self, scene: Any, field: Any) -> None:
        from neurecon.geometry.photo import gray, source_views

        device = next(field.parameters()).device
        train = scene.train_ids
        # Grey photos of the training views only (sources and references are training views).
        ids = set(train.tolist())
        self._photos = [
            gray(torch.from_numpy(scene.image(v)).to(device)) if v in ids else None
            for v in range(len(scene.sizes))
        ]
        self._K, self._c2w = scene.K.to(device), scene.c2w.to(device)
        self._sources = source_views(
            scene.c2w, train, self.source_views, self.min_deg, self.max_deg
        ).to(device)

    def value(self, out: Any, rgb: Tensor, mask: Tensor | None) -> Tensor | None:
        return None  # needs the batch's views and pixels (value_for)

    def value_for(self, out: Any, batch: Any, mask: Tensor | None) -> Tensor | None:
        if self._photos is None or out.normal is None or batch.view is None:
            return None
        keep = out.opacity.detach() > self.min_opacity
        if mask is not None:
            keep &= mask > 0.5
        if not bool(keep.any()):
            return None
        # The expected surface distance: the weighted mean depth (out.depth sums w·t).
        t = out.depth[keep] / out.opacity[keep].clamp_min(1e-6)
        view = batch.view[keep]
        return photo_consistency_loss(
            self._photos, self._K, self._c2w, self._sources[view], view,
            batch.u[keep], batch.v[keep], batch.origins[keep] + t[:, None] * batch.dirs[keep],
            out.normal[keep], batch.dirs[keep], self.half_patch, self.keep, self.min_variance,
        )  # fmt: skip


def default_terms() -> dict[str, LossTerm]:
    """The terms of ``conf/loss/default.yaml``, for Python callers that give none."""
    return {"color": ColorLoss(), "eikonal": EikonalLoss(), "mask": MaskLoss(weight=0.5),
            "free_space": FreeSpaceLoss()}  # fmt: skip


def total_loss(
    terms: Mapping[str, LossTerm],
    out: Any,
    rgb: Tensor,
    mask: Tensor | None,
    step: int = 0,
    batch: Any = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The weighted sum of the terms that apply (weight > 0, a value), in their order; with
    the ``batch`` (:class:`~neurecon.data.rays.RayBatch`) each term's
    :meth:`~LossTerm.value_for` it, else its :meth:`~LossTerm.value` of ``rgb``.
    Returns (total, {name: unweighted value})."""
    values: dict[str, Tensor] = {}
    total: Any = 0
    for name, term in terms.items():
        w = term.weight_at(step)
        if w <= 0 and (term.warmup_steps == 0 or step < term.start_step):
            continue
        v = term.value(out, rgb, mask) if batch is None else term.value_for(out, batch, mask)
        if v is not None:
            values[name] = v
            total = total + w * v
    if not values:  # nothing applies: a zero without gradient (the step learns nothing)
        total = rgb.new_zeros(())
    return total, values
