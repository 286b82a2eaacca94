"""Compose a run from its config: Hydra ``_target_`` + ``instantiate`` is the only registry."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from neurecon.cluster import SlurmJob, deadline_on_signal
from neurecon.data.scene import Scene
from neurecon.errors import ConfigError, NeuReconError
from neurecon.eval.settings import EvalSettings
from neurecon.optim import OptimizerFactory
from neurecon.storage import refuse_saved_password
from neurecon.train import Trainer

log = logging.getLogger(__name__)


@dataclass
class Run:
    scene: Scene
    field: nn.Module
    renderer: nn.Module
    optimizer: OptimizerFactory
    trainer: Trainer | None  # None when built for evaluation only


def instantiate_node(node: Any, where: str, **kwargs: Any) -> Any:
    """``instantiate`` that surfaces our own input errors instead of Hydra's wrapper."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, NeuReconError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise ConfigError(f"{where}: {e}") from e


def instantiate_named(node: Any, where: str) -> dict[str, Any] | None:
    """A mapping of named ``_target_`` nodes (``loss``, ``callbacks``, ``eval.metrics``), each
    instantiated on its own so that an error names it (``where.NAME``); a null node is
    dropped. None when ``node`` is None (the caller's defaults)."""
    if node is None:
        return None
    return {str(k): instantiate_node(v, f"{where}.{k}") for k, v in node.items() if v is not None}


def loss_terms(cfg: DictConfig) -> dict[str, Any] | None:
    """The ``loss`` group's terms by name, or None (the trainer's defaults)."""
    return instantiate_named(cfg.get("loss"), "loss")


def callbacks(cfg: DictConfig) -> dict[str, Any] | None:
    """The ``callbacks`` group's objects by name, or None (the trainer's defaults)."""
    return instantiate_named(cfg.get("callbacks"), "callbacks")


def evaluation(cfg: DictConfig) -> EvalSettings:
    """The ``eval`` node's settings (metric objects built); device, seed and masks are the
    trainer's to set."""
    return EvalSettings.from_node(cfg.get("eval"))


def build(
    cfg: DictConfig, with_trainer: bool = True, trainer_overrides: dict[str, Any] | None = None
) -> Run:
    """Instantiate dataset, encoder, field, renderer, optimizer and (for training) the trainer
    from ``cfg`` (``trainer_overrides``: extra ``Trainer`` arguments). Tools that only evaluate
    pass ``with_trainer=False``."""
    # The one storage URL a run's own config may carry: never with its password (it is saved).
    raw = OmegaConf.to_container(cfg, resolve=False).get("callbacks") or {}
    prune = raw.get("prune") if isinstance(raw, dict) else None
    if isinstance(prune, dict):
        refuse_saved_password(prune.get("storage"), "callbacks.prune.storage")
    # Network init draws from the global RNG: seed first so a run is reproducible.
    torch.manual_seed(int(cfg.trainer.get("seed", 0)))
    encoder = instantiate_node(cfg.encoder, "encoder")
    scene = instantiate_node(cfg.dataset, "dataset")
    # field.background_model=auto: model what lies outside the unit sphere (NeRF++) exactly when
    # there are no masks to tell the object from its surroundings.
    extra: dict[str, Any] = {}
    unmasked = scene.masks is None or cfg.trainer.get("use_mask", "auto") is False
    if "background_net" in cfg.field:
        mode = cfg.field.get("background_model", "auto")
        wanted = mode == "nerfpp" or (mode == "auto" and unmasked)
        extra["background_net"] = (
            instantiate_node(cfg.field.background_net, "field.background_net") if wanted else None
        )
        if wanted:
            log.info(
                "background: NeRF++ field outside the unit sphere (field.background_model=%s)", mode
            )
    optimizer = instantiate_node(cfg.optimizer, "optimizer")
    if hasattr(optimizer, "resolve"):  # optimizer.lr_variance=auto: by whether masks are used
        optimizer.resolve(masked=not unmasked)
    return Run(
        scene=scene,
        field=instantiate_node(cfg.field, "field", encoder=encoder, **extra),
        renderer=instantiate_node(cfg.renderer, "renderer"),
        optimizer=optimizer,
        # The loss terms and callbacks are objects (dataclasses): given to the partial, not
        # merged into the node (Hydra would turn them back into configs).
        trainer=instantiate_node(
            cfg.trainer,
            "trainer",
            _partial_=True,
            **(trainer_overrides or {}),
        )(loss=loss_terms(cfg), callbacks=callbacks(cfg), evaluation=evaluation(cfg))
        if with_trainer
        else None,
    )


def make_logger(cfg: DictConfig, out_dir: str | Path):
    """The configured logger for a run in ``out_dir``; in a Hydra multirun the W&B group is
    the sweep's name and the swept keys are copied to the top of the W&B config."""

    kwargs: dict[str, Any] = {
        "out_dir": out_dir,
        "run_config": OmegaConf.to_container(cfg, resolve=True),
    }
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        swept = [o.split("=", 1)[0].lstrip("+~") for o in hc.overrides.task if "=" in o]
        if "hparams" in cfg.logger:
            kwargs["hparams"] = list(dict.fromkeys([*cfg.logger.hparams, *swept]))
        if hc.mode == RunMode.MULTIRUN and "group" in cfg.logger and cfg.logger.group is None:
            kwargs["group"] = Path(hc.sweep.dir).name
        if "name" in cfg.logger and cfg.logger.name is None:
            kwargs["name"] = (
                Path(str(out_dir)).name
                if hc.mode != RunMode.MULTIRUN
                else f"{Path(hc.sweep.dir).name}-{Path(str(out_dir)).name}"  # sweep-trial_N
            )
    except ValueError:  # HydraConfig not set: called from Python, not through train.py
        pass
    # Not recursive: run_config holds the run's _target_ nodes as plain data.
    return instantiate_node(cfg.logger, "logger", _recursive_=False, **kwargs)


def _fit(
    cfg: DictConfig,
    out_dir: str | Path,
    trainer_overrides: dict[str, Any] | None = None,
    attach: Callable[[Trainer], None] | None = None,
) -> tuple[Run, dict[str, Any]]:
    """Build and train; ``attach`` receives the trainer before training starts."""
    r = build(cfg, trainer_overrides=trainer_overrides)
    if attach is not None:
        attach(r.trainer)
    log.info(
        "scene %s: %d views (%d train / %d test) at %s, masks=%s",
        r.scene.name,
        r.scene.num_views,
        len(r.scene.train_ids),
        len(r.scene.test_ids),
        ", ".join(sorted({f"{w}x{h}" for h, w in r.scene.sizes.tolist()})),
        r.scene.masks is not None,
    )
    logger = make_logger(cfg, out_dir) if "logger" in cfg else None
    status = "failed"
    try:
        metrics = r.trainer.fit(r.scene, r.field, r.renderer, r.optimizer, out_dir, logger)
        status = metrics["status"]
    finally:
        if logger is not None:
            logger.finish(status)
    return r, metrics


def run(cfg: DictConfig, out_dir: str | Path) -> float | list[float]:
    """Train one run in ``out_dir``; return the objective(s) named by ``trainer.objective``.
    In a SLURM job, :mod:`neurecon.cluster` adapts threads, time limit and resume."""
    job = SlurmJob.from_env()
    if job is None:
        r, metrics = _fit(cfg, out_dir)
    else:
        if job.cpus_per_task:
            torch.set_num_threads(job.cpus_per_task)
        with deadline_on_signal() as attach:
            with open_dict(cfg):  # the job's own callback node
                cfg.callbacks = cfg.get("callbacks") or {}
                cfg.callbacks.deadline = job.deadline_node(cfg.trainer, time.time())
            overrides = job.trainer_overrides(cfg.trainer)
            r, metrics = _fit(
                cfg, out_dir, overrides, lambda t: attach(t.named_callbacks["deadline"])
            )
    if metrics["status"] == "time_limit":
        log.warning("run stopped early: %s", metrics.get("stop_reason"))
    elif metrics["status"] != "completed":
        log.error("run finished with status %r: %s", metrics["status"], metrics.get("error"))
    objectives = r.trainer.objective
    names = [objectives] if isinstance(objectives, str) else list(objectives)
    values = []
    for name in names:
        value = metrics.get(name)
        if not isinstance(value, int | float):
            raise ConfigError(
                f"trainer.objective: {name!r} is not among the run's metrics: "
                f"{sorted(k for k, v in metrics.items() if isinstance(v, float | int))}"
            )
        values.append(float(value) if math.isfinite(value) else float("nan"))
    return values[0] if isinstance(objectives, str) else values
