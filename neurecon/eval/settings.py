"""What evaluation needs to know, whoever runs it (the trainer, evaluate.py, the bench): the
``eval`` config node (:class:`EvalConfig`, the one place its defaults live) and, for a run,
:class:`EvalSettings` (the node plus the device, seed and mask rule of the run)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from neurecon.errors import ConfigError
from neurecon.metrics.nodes import DTUChamfer, MeshMetric, Metric, ViewMetric, default_metrics


@dataclass
class EvalConfig:
    """The ``eval`` node (``conf/eval/default.yaml``), a typed config (:mod:`neurecon.schema`).

    ``chunk``: rays per rendering chunk (halves on out-of-memory and stays so);
    ``mesh_resolution``: the end-of-run mesh's marching-cubes grid (0: no mesh);
    ``video_frames``: > 0, a turntable video of that many frames; ``metrics``: the metric nodes
    by name (:mod:`neurecon.metrics.nodes`), each a ``_target_``;
    ``clean_mesh``: a run trained with masks keeps, in ``mesh.ply``, only the faces inside the
    masks' visual hull (dilated by ``hull_dilate_px`` pixels of the full-size photos) and the
    connected components with at least ``min_component`` of the largest one's faces; the
    extracted mesh is kept beside it as ``mesh_raw.ply``; ``picture_size``: pixels a side of
    each of ``mesh.png``'s panels (0: no picture; a 512-px picture of a large mesh takes
    seconds)."""

    chunk: int = 2048
    mesh_resolution: int = 128
    video_frames: int = 0
    clean_mesh: bool = True
    hull_dilate_px: float = 12.0
    min_component: float = 0.05
    picture_size: int = 512
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalSettings(EvalConfig):
    """:class:`EvalConfig` with the metric objects built, plus what the run decides: ``device``,
    ``seed`` (surface sampling), ``progress`` (bars) and ``use_mask`` (``trainer.use_mask``:
    whether a masked scene was trained with its masks, which decides the PSNR's reference)."""

    metrics: dict[str, Metric] = field(default_factory=default_metrics)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    progress: bool = True
    use_mask: bool | str = "auto"

    def __post_init__(self) -> None:
        if int(self.chunk) < 1:
            raise ConfigError(f"eval.chunk must be >= 1, got {self.chunk}")
        if self.mesh_resolution and self.mesh_resolution < 8:
            raise ConfigError(f"eval.mesh_resolution must be 0 or >= 8, got {self.mesh_resolution}")
        for name, m in self.metrics.items():
            if not isinstance(m, Metric):
                raise ConfigError(f"eval.metrics.{name}: {type(m).__name__} is not a Metric")
        self.chunk, self.mesh_resolution = int(self.chunk), int(self.mesh_resolution or 0)
        self.video_frames = int(self.video_frames or 0)
        if not 0.0 <= float(self.min_component) <= 1.0 or float(self.hull_dilate_px) < 0:
            raise ConfigError("eval: need 0 <= min_component <= 1 and hull_dilate_px >= 0")
        self.picture_size = int(self.picture_size or 0)
        if self.picture_size and self.picture_size < 16:
            raise ConfigError(f"eval.picture_size must be 0 or >= 16, got {self.picture_size}")

    def view_metrics(self, validation: bool = False) -> list[ViewMetric]:
        """The per-view metrics (at validation: those with ``at_validation``)."""
        return [m for m in self.metrics.values() if isinstance(m, ViewMetric)
                and (m.at_validation or not validation)]  # fmt: skip

    def cleans_mesh(self) -> bool:
        """Whether a masked scene's mesh is cleaned by the visual hull: ``clean_mesh``, unless
        the run was trained without its masks."""
        return bool(self.clean_mesh) and self.use_mask is not False

    def mesh_metrics(self) -> list[MeshMetric]:
        return [m for m in self.metrics.values() if isinstance(m, MeshMetric)]

    def dtu(self) -> DTUChamfer | None:
        """The DTU protocol's node, if any (``evaluate.py --dtu-protocol`` changes it)."""
        return next((m for m in self.metrics.values() if isinstance(m, DTUChamfer)), None)

    @classmethod
    def from_config(cls, cfg: Any, device: torch.device | None = None) -> EvalSettings:
        """From a run's composed config (its ``eval`` node, and ``trainer`` for the device,
        seed and masks). A CUDA run's folder evaluated on a machine without CUDA: the CPU."""
        from neurecon.device import resolve_device

        t = cfg.trainer
        saved = str(t.get("device", "auto"))
        if device is None and saved.startswith("cuda") and not torch.cuda.is_available():
            device = torch.device("cpu")
        return cls.from_node(
            cfg.get("eval"),
            device=device or resolve_device(saved),
            seed=int(t.get("seed", 0)),
            progress=bool(t.get("progress", True)),
            use_mask=t.get("use_mask", "auto"),
        )

    @classmethod
    def from_node(cls, node: Mapping[str, Any] | None, **run: Any) -> EvalSettings:
        """From an ``eval`` node (metric nodes instantiated, each on its own so that an error
        names it); None: the defaults."""
        from neurecon.build import instantiate_named

        if node is None:
            return cls(**run)
        items = dict(node)
        unknown = set(items) - {f.name for f in fields(EvalConfig)}
        if unknown:
            raise ConfigError(f"eval: unknown key(s) {sorted(unknown)}")
        metrics = instantiate_named(items.pop("metrics", None), "eval.metrics")
        return cls(**items, metrics=default_metrics() if metrics is None else metrics, **run)
