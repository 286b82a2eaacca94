"""Experiment loggers behind one interface: wandb, tensorboard, csv, none.

Every logger takes the run directory and the resolved config from ``neurecon.build.run``; the
trainer only calls ``log_metrics``, ``log_images``, ``log_mesh``, ``log_video``, ``log_summary`` and
``finish``.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from neurecon.errors import ConfigError

log = logging.getLogger(__name__)


def _plain(cfg: Any) -> dict:
    """A plain dict from a DictConfig / mapping (wandb and yaml want plain containers)."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg or {})


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float | np.floating | np.integer) and not isinstance(v, bool)
    }


class Logger:
    """What the loop and the evaluation call on a logger; each hook does nothing here, so a
    logger overrides the ones it records (``logger=`` group, a ``_target_`` each)."""

    # The arguments naming where a logger writes: built from an untrusted run folder, they must
    # stay inside it (neurecon.runs).
    output_paths: ClassVar[tuple[str, ...]] = ("out_dir",)

    def __init__(self, out_dir: str | Path = ".", run_config: Mapping | None = None, **_: Any):
        self.out_dir = Path(out_dir)

    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        pass

    def log_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        pass

    def log_mesh(
        self, step: int, path: Path, vertices: np.ndarray, colors: np.ndarray | None = None
    ) -> None:
        """The final mesh: world-frame ``vertices`` (V, 3), ``colors`` (V, 3+) uint8 or None."""

    def log_video(self, step: int, key: str, path: Path) -> None:
        """A video file (``.mp4``) written by the run."""

    def log_summary(self, metrics: Mapping[str, Any]) -> None:
        pass

    def finish(self, status: str = "completed") -> None:
        pass


class NoneLogger(Logger):
    """Logs nothing (metrics.json and the text log are still written): ``logger=none``."""


class CSVLogger(Logger):
    """``log.csv`` in the run dir, one ``step,key,value`` row per scalar (easy to pivot)."""

    output_paths: ClassVar[tuple[str, ...]] = ("out_dir", "filename")

    def __init__(
        self,
        out_dir: str | Path = ".",
        run_config: Mapping | None = None,
        filename: str = "log.csv",
        **_: Any,
    ):
        super().__init__(out_dir)
        self.path = self.out_dir / filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        self._f = open(self.path, "a", newline="")  # noqa: SIM115  (open for the whole run; appends on resume)
        self._w = csv.writer(self._f)
        if new:
            self._w.writerow(["step", "key", "value"])

    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        for k, v in _scalars(metrics).items():
            self._w.writerow([step, k, repr(v)])
        self._f.flush()

    def log_summary(self, metrics: Mapping[str, Any]) -> None:
        self.log_metrics(-1, metrics)  # step -1: the run's final values

    def finish(self, status: str = "completed") -> None:
        self._f.close()


class TensorBoardLogger(Logger):
    """TensorBoard event files in ``<run dir>/tb`` (``tensorboard --logdir outputs``)."""

    def __init__(self, out_dir: str | Path = ".", run_config: Mapping | None = None, **_: Any):
        super().__init__(out_dir)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("logger=tensorboard needs the tensorboard package") from None
        self.writer = SummaryWriter(str(self.out_dir / "tb"))
        if run_config is not None:
            import yaml

            self.writer.add_text("config", "```\n" + yaml.safe_dump(_plain(run_config)) + "\n```")

    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        for k, v in _scalars(metrics).items():
            self.writer.add_scalar(k, v, step)

    def log_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        for k, img in images.items():
            self.writer.add_image(k, np.clip(img, 0, 1), step, dataformats="HWC")

    def log_summary(self, metrics: Mapping[str, Any]) -> None:
        for k, v in _scalars(metrics).items():
            self.writer.add_scalar(f"summary/{k}", v, 0)

    def finish(self, status: str = "completed") -> None:
        self.writer.close()


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


class WandbLogger(Logger):
    """Weights & Biases.

    Args:
        project, entity, group, name, tags: the W&B run identity. ``group`` defaults to the
            sweep's name in a multirun, so a sweep's trials sit side by side in the dashboard.
        mode: ``auto`` (online with an API key, else offline — sync later with ``wandb sync``),
            ``online``, ``offline`` or ``disabled``.
        hparams: config keys copied to the top level of the W&B config (parallel coordinates).
        log_mesh_points: points of the final mesh uploaded as ``wandb.Object3D`` (0: none).
    """

    def __init__(
        self,
        out_dir: str | Path = ".",
        run_config: Mapping | None = None,
        project: str = "neurecon",
        entity: str | None = None,
        group: str | None = None,
        name: str | None = None,
        tags: Sequence[str] = (),
        mode: str = "auto",
        hparams: Sequence[str] = (),
        log_mesh_points: int = 20000,
        **_: Any,
    ):
        super().__init__(out_dir)
        if mode not in ("auto", "online", "offline", "disabled"):
            raise ConfigError(f"logger.mode={mode!r}; choose auto, online, offline or disabled")
        try:
            import wandb
        except ImportError:
            raise ConfigError("logger=wandb needs wandb: pip install -e '.[wandb]'") from None
        self.wandb = wandb
        if mode == "auto":
            mode = "online" if _has_wandb_key() else "offline"
            if mode == "offline":
                log.info("wandb: no API key configured, logging offline (wandb sync later)")
        cfg = _plain(run_config)
        flat = _flatten(cfg)
        for key in hparams:  # top-level copies for parallel-coordinates / scatter plots
            if key in flat:
                cfg[key] = flat[key]
        self.log_mesh_points = log_mesh_points
        self.run = wandb.init(
            project=project,
            entity=entity,
            group=group,
            name=name,
            tags=list(tags),
            config=cfg,
            mode=mode,
            dir=str(self.out_dir),
            reinit="finish_previous",
        )

    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        self.run.log(_scalars(metrics), step=step)

    def log_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        self.run.log(
            {
                k: self.wandb.Image((np.clip(v, 0, 1) * 255).astype(np.uint8))
                for k, v in images.items()
            },
            step=step,
        )

    def log_mesh(
        self, step: int, path: Path, vertices: np.ndarray, colors: np.ndarray | None = None
    ) -> None:
        if self.log_mesh_points and len(vertices):
            idx = np.random.default_rng(0).choice(
                len(vertices), min(len(vertices), self.log_mesh_points), replace=False
            )
            pts = np.asarray(vertices, dtype=np.float64)[idx]
            if colors is not None:  # W&B point clouds: x, y, z, r, g, b (0-255)
                pts = np.c_[pts, np.asarray(colors)[idx, :3].astype(np.float64)]
            self.run.log({"mesh": self.wandb.Object3D(pts)}, step=step)

    def log_video(self, step: int, key: str, path: Path) -> None:
        self.run.log({key: self.wandb.Video(str(path), format="mp4")}, step=step)

    def log_summary(self, metrics: Mapping[str, Any]) -> None:
        self.run.summary.update(_scalars(metrics))

    def finish(self, status: str = "completed") -> None:
        self.run.summary["status"] = status
        self.run.finish(exit_code=0 if status == "completed" else 1)


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


class AutoLogger:
    """``logger=auto`` (the default): wandb when it is installed, else csv."""

    output_paths: ClassVar[tuple[str, ...]] = ("out_dir",)

    def __new__(cls, out_dir: str | Path = ".", run_config: Mapping | None = None, **kwargs: Any):
        try:
            import wandb  # noqa: F401
        except ImportError:
            return CSVLogger(out_dir, run_config)
        return WandbLogger(out_dir, run_config, **kwargs)
