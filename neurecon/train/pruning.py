"""Early stopping of hopeless sweep trials: report validation PSNR to the Optuna trial.

The sweeper passes ``trainer.pruning.{study,trial_id}`` and the storage URL in the environment
(``NEURECON_TRIAL_STORAGE``: it may hold credentials, which must not reach the saved config or
W&B); reporting goes through the study's storage, so it works in-process, with a process-pool
launcher and across machines sharing a database. Optuna is imported only when pruning is on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from neurecon.errors import ConfigError
from neurecon.storage import TRIAL_STORAGE_ENV, open_storage

log = logging.getLogger(__name__)


class TrialReporter:
    """Reports ``value`` at ``step`` and raises ``optuna.TrialPruned`` when told to stop."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        import optuna

        self.optuna = optuna
        url = cfg.get("storage") or os.environ.get(TRIAL_STORAGE_ENV)
        if not url:
            raise ConfigError(
                f"trainer.pruning: no study storage (set by the sweeper in ${TRIAL_STORAGE_ENV})"
            )
        study = optuna.load_study(study_name=cfg["study"], storage=open_storage(url))
        self.trial = optuna.trial.Trial(study, int(cfg["trial_id"]))

    def report(self, step: int, value: float) -> None:
        self.trial.report(value, step)
        if self.trial.should_prune():
            log.warning("step %d: pruned by the sweep (validation value %.4g)", step, value)
            raise self.optuna.TrialPruned(f"pruned at step {step} (value {value:.4g})")


def make_reporter(cfg: Mapping[str, Any] | None) -> TrialReporter | None:
    if not cfg or cfg.get("trial_id") is None:
        return None
    return TrialReporter(cfg)
