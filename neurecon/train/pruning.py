"""Early stopping of hopeless sweep trials: report validation PSNR to the Optuna trial.

The sweeper adds the node ``callbacks.prune`` (a :class:`PruningCallback`: ``study``,
``trial_id``) to each trial's config, and passes the storage URL in the environment
(``NEURECON_TRIAL_STORAGE``: it may hold credentials, which must not reach the saved config or
W&B); reporting goes through the study's storage, so it works in-process, with a process-pool
launcher and across machines sharing a database. Optuna is imported only when pruning is on.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Optional

from neurecon.errors import ConfigError
from neurecon.storage import TRIAL_STORAGE_ENV, open_storage
from neurecon.train.callbacks import Callback, FitContext

log = logging.getLogger(__name__)


class TrialReporter:
    """Reports ``value`` at ``step`` and raises ``optuna.TrialPruned`` when told to stop."""

    def __init__(self, study: str, trial_id: int, storage: str | None = None) -> None:
        import optuna

        self.optuna = optuna
        url = storage or os.environ.get(TRIAL_STORAGE_ENV)
        if not url:
            raise ConfigError(
                f"callbacks.prune: no study storage (set by the sweeper in ${TRIAL_STORAGE_ENV})"
            )
        study_ = optuna.load_study(study_name=study, storage=open_storage(url))
        self.trial = optuna.trial.Trial(study_, int(trial_id))

    def report(self, step: int, value: float) -> None:
        self.trial.report(value, step)
        if self.trial.should_prune():
            log.warning("step %d: pruned by the sweep (validation value %.4g)", step, value)
            raise self.optuna.TrialPruned(f"pruned at step {step} (value {value:.4g})")


@dataclass
class PruningCallback(Callback):
    """Reports each validation's ``metric`` to the Optuna trial ``trial_id`` of ``study``
    (storage: ``storage``, else the sweeper's ``$NEURECON_TRIAL_STORAGE``), which may stop the
    run (``optuna.TrialPruned``). Needs ``callbacks.validate`` with ``every`` > 0. A password
    written in ``storage`` is refused when the run is built (the node is saved with the run)."""

    study: str = ""
    trial_id: int = 0
    metric: str = "val/psnr"
    storage: Optional[str] = None  # noqa: UP045  (OmegaConf reads the annotation)
    reporter: TrialReporter | None = field(default=None, init=False, repr=False)

    def on_fit_start(self, ctx: FitContext) -> None:
        self.reporter = TrialReporter(self.study, self.trial_id, self.storage)

    def on_validation_end(self, ctx: FitContext, res: dict) -> None:
        if self.reporter is None:
            raise RuntimeError("PruningCallback: on_fit_start was not called")
        if self.metric not in res:
            raise ConfigError(
                f"callbacks.prune.metric={self.metric!r} is not a validation figure: {sorted(res)}"
            )
        self.reporter.report(ctx.state.step, res[self.metric])
