"""What evaluation needs to know, whoever runs it (the trainer, evaluate.py, the bench)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch

from neurecon.errors import ConfigError


@dataclass
class MetricOptions:
    """The ``metrics`` node: a typed config (:mod:`neurecon.schema`), documented in
    ``conf/config.yaml``."""

    lpips_net: Optional[str] = "alex"  # noqa: UP045  (OmegaConf reads the annotation)
    dtu_gt_root: Optional[str] = None  # noqa: UP045
    dtu_scan: Optional[int] = None  # noqa: UP045
    dtu_protocol: str = "neus"  # mesh culling before the DTU evaluation (metrics/dtu.PROTOCOLS)
    dtu_mask_dilate: Optional[float] = None  # noqa: UP045  (px of the photos; null: protocol's)


METRIC_DEFAULTS: dict[str, Any] = asdict(MetricOptions())


def metric_options(metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``metrics`` config group's keys with defaults; unknown keys are an error."""
    unknown = set(metrics or {}) - set(METRIC_DEFAULTS)
    if unknown:
        raise ConfigError(
            f"metrics: unknown key(s) {sorted(unknown)}; known {sorted(METRIC_DEFAULTS)}"
        )
    return {**METRIC_DEFAULTS, **dict(metrics or {})}


@dataclass
class EvalSettings:
    """Args: device; chunk (rays per rendering chunk; halves on out-of-memory and stays so);
    mesh_resolution (0: no mesh); chamfer_points / chamfer_threshold (F-score threshold as a
    fraction of the object radius); seed (surface sampling); progress (bars); metrics (the
    ``metrics`` group: lpips_net, dtu_gt_root, dtu_scan, dtu_protocol, dtu_mask_dilate);
    video_frames (> 0: a turntable video of that many frames); use_mask (``trainer.use_mask``:
    whether a masked scene was trained with its masks, which decides the headline PSNR's
    reference)."""

    device: torch.device
    chunk: int = 2048
    mesh_resolution: int = 128
    chamfer_points: int = 100_000
    chamfer_threshold: float = 0.01
    seed: int = 0
    progress: bool = True
    metrics: dict[str, Any] = field(default_factory=lambda: dict(METRIC_DEFAULTS))
    video_frames: int = 0
    use_mask: bool | str = "auto"

    @classmethod
    def from_config(cls, cfg: Any, device: torch.device | None = None) -> EvalSettings:
        """From a run's composed config (``trainer`` and ``metrics`` groups)."""
        from neurecon.device import resolve_device

        t = cfg.trainer
        saved = str(t.get("device", "auto"))
        if device is None and saved.startswith("cuda") and not torch.cuda.is_available():
            device = torch.device("cpu")  # a CUDA run's folder, evaluated on a CPU machine
        return cls(
            device=device or resolve_device(saved),
            chunk=int(t.get("chunk", 2048)),
            mesh_resolution=int(t.get("mesh_resolution", 128) or 0),
            chamfer_points=int(t.get("chamfer_points", 100_000)),
            chamfer_threshold=float(t.get("chamfer_threshold", 0.01)),
            seed=int(t.get("seed", 0)),
            progress=bool(t.get("progress", True)),
            metrics=metric_options(cfg.get("metrics")),
            video_frames=int(t.get("video_frames", 0) or 0),
            use_mask=t.get("use_mask", "auto"),
        )
