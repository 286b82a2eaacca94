"""The training entry point: ``neurecon-train`` (installed) and ``python train.py`` (checkout).

Both compose a run from the Hydra configs in ``conf/``, shipped in the wheel as the package
``neurecon.conf`` (``setup.py`` maps it), so an installed neurecon runs from any folder.
"""

from __future__ import annotations

import importlib.resources
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from neurecon.build import run
from neurecon.errors import ConfigError, NeuReconError

log = logging.getLogger("train")


def config_dir() -> Path:
    """The folder of ``config.yaml`` and the config groups.

    The installed package's ``neurecon.conf`` (a wheel, or an editable install that maps it to
    the checkout's ``conf/``); failing that, ``conf/`` beside this package in a source checkout.
    """
    try:
        root = Path(str(importlib.resources.files("neurecon.conf")))
    except ModuleNotFoundError:
        root = Path(__file__).resolve().parents[1] / "conf"
    if not (root / "config.yaml").is_file():
        raise ConfigError(
            f"neurecon's configs not found: no {root / 'config.yaml'} (reinstall neurecon, "
            "or run from a source checkout)"
        )
    return root


def train_task(cfg: DictConfig) -> float | list[float]:
    """Hydra's task function: train, evaluate and return the sweep objective(s)."""
    hc = HydraConfig.get()
    try:
        return run(cfg, hc.runtime.output_dir)
    except NeuReconError as e:  # user error: a clear message, no traceback, exit code 2
        log.error("%s", e)
        if hc.mode == RunMode.MULTIRUN:
            raise  # the sweeper records the trial as failed and goes on
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def train() -> None:
    """``neurecon-train [OVERRIDES]``: the same command line as ``python train.py``."""
    try:
        conf = config_dir()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    # Hydra finds plugins by listing the hydra_plugins namespace, which an editable install's
    # import hook cannot list from outside the checkout: register the sweeper by hand (its
    # import stores hydra/sweeper=neurecon_optuna and =optuna); a second registration is a no-op.
    from hydra_plugins.neurecon_optuna_sweeper.sweeper import register_plugins

    register_plugins()

    # Hydra returns the task's value only to a caller passing a config; the script exits 0.
    hydra.main(version_base="1.3", config_path=str(conf), config_name="config")(train_task)()
