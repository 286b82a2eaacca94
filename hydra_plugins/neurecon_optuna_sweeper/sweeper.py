"""``hydra/sweeper=neurecon_optuna``: Optuna on a current release, same config shape as
hydra-optuna-sweeper (``direction``, ``study_name``, ``storage``, ``n_trials``, ``n_jobs``,
``params`` in Hydra's sweep syntax; the sampler and the pruner are ``_target_`` nodes chosen with
``hydra/sweeper/sampler=tpe|random|nsga2`` and ``hydra/sweeper/pruner=median|hyperband``, or
written out for any Optuna class), plus:

- a persistent study (``load_if_exists``): re-running the same command resumes it;
- a trial that raises (a crash, a diverged run) is recorded as FAIL and the sweep goes on;
- trial folders are named by the Optuna trial number (``trial_${hydra.job.num}`` gets it), so
  resumed runs and parallel workers on one study and one sweep folder never collide;
- a summary table of all trials (and the best trial / Pareto front) at the end,
  also written to ``<sweep dir>/trials.csv``;
- a resumed or parallel worker continues the search and never repeats it: the sampler is
  seeded per trial from ``seed`` and the trial's number, which the storage hands out once per
  study (a fixed ``seed`` still makes the whole sweep reproducible);
- storage specs and credentials as in :mod:`neurecon.storage` (a journal file by default; a
  password on the command line is refused, since Hydra writes overrides to disk).

hydra-optuna-sweeper 1.3 pins optuna<3 (and its RDB storage needs SQLAlchemy<2), and offers no
pruning; that is why this small plugin exists.
"""

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List  # noqa: UP035

import pandas as pd
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

from neurecon.atomic import atomic_write
from neurecon.errors import ConfigError
from neurecon.storage import TRIAL_STORAGE_ENV, open_storage, refuse_saved_password

log = logging.getLogger(__name__)


def _node(target: str, **kwargs: Any) -> dict[str, Any]:
    return {"_target_": target, **kwargs}


# The sampler is partial: the sweeper calls it with a seed per trial (see ``_ask``).
SAMPLERS = {
    name: _node(f"optuna.samplers.{cls}", _partial_=True)
    for name, cls in (
        ("tpe", "TPESampler"),
        ("random", "RandomSampler"),
        ("nsga2", "NSGAIISampler"),
    )
}
PRUNERS = {
    # Two finished trials before judging, and from the first report on: sweeps here are short.
    "median": _node("optuna.pruners.MedianPruner", n_startup_trials=2, n_warmup_steps=0),
    "hyperband": _node("optuna.pruners.HyperbandPruner"),
}


@dataclass
class NeureconOptunaSweeperConf:
    _target_: str = "hydra_plugins.neurecon_optuna_sweeper.sweeper.NeureconOptunaSweeper"
    defaults: List[Any] = field(  # noqa: UP006
        default_factory=lambda: ["_self_", {"sampler": "tpe"}, {"pruner": None}]
    )
    sampler: Any = None  # a _partial_ sampler node: hydra/sweeper/sampler=tpe|random|nsga2
    direction: Any = "maximize"  # or a list, one per objective
    study_name: str = "neurecon"
    storage: Any = None  # null: in memory; PATH.journal, sqlite:///path.db, postgresql://...
    n_trials: int = 8
    n_jobs: int = 1  # trials launched together (with a parallel launcher, e.g. joblib)
    seed: Any = None
    pruner: Any = None  # null, or a pruner node (hydra/sweeper/pruner=median|hyperband)
    params: Dict[str, str] = field(default_factory=dict)  # noqa: UP006  (OmegaConf typing)


_cs = ConfigStore.instance()
_cs.store(group="hydra/sweeper", name="neurecon_optuna", node=NeureconOptunaSweeperConf,
          provider="neurecon")  # fmt: skip
for _name, _n in SAMPLERS.items():
    _cs.store(group="hydra/sweeper/sampler", name=_name, node=_n, provider="neurecon")
for _name, _n in PRUNERS.items():
    _cs.store(group="hydra/sweeper/pruner", name=_name, node=_n, provider="neurecon")


def _distribution(key: str, sweep: Any):
    import optuna.distributions as d

    if isinstance(sweep, ChoiceSweep):
        return d.CategoricalDistribution(sweep.list)
    if isinstance(sweep, RangeSweep):
        return d.IntDistribution(int(sweep.start), int(sweep.stop) - 1, step=int(sweep.step or 1))
    if isinstance(sweep, IntervalSweep):
        log_scale = "log" in sweep.tags
        if isinstance(sweep.start, int) and isinstance(sweep.end, int) and not log_scale:
            return d.IntDistribution(sweep.start, sweep.end)
        return d.FloatDistribution(float(sweep.start), float(sweep.end), log=log_scale)
    raise ValueError(f"hydra.sweeper.params.{key}: unsupported sweep {sweep!r}")


def _trial_seed(seed: Any, number: int) -> int | None:
    """The sampler seed for trial ``number``: distinct per trial, reproducible per ``seed``."""
    if seed is None:
        return None
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(number)]).generate_state(1)[0])


def _suggest(trial: Any, name: str, dist: Any) -> Any:
    import optuna.distributions as d

    if isinstance(dist, d.CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, d.IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def _built(node: Any, key: str) -> Any:
    """A sampler / pruner node as Hydra instantiates it; a mapping (e.g. from Python) is
    instantiated here. A bare name is the old string switch: say what to write instead."""
    from hydra.utils import instantiate

    if isinstance(node, str):
        raise ValueError(
            f"hydra.sweeper.{key}={node!r}: {key}s are _target_ nodes now; choose one with "
            f"hydra/sweeper/{key}={node}"
        )
    if isinstance(node, dict) or OmegaConf.is_dict(node):
        return instantiate(node)
    return node


class NeureconOptunaSweeper(Sweeper):
    def __init__(
        self,
        sampler: str,
        direction: Any,
        study_name: str,
        storage: Any,
        n_trials: int,
        n_jobs: int,
        seed: Any,
        params: dict[str, str],
        pruner: Any = None,
    ) -> None:
        self.sampler = _built(sampler if sampler is not None else SAMPLERS["tpe"], "sampler")
        self.pruner = _built(pruner, "pruner")
        self.study_name, self.storage = study_name, storage
        self.directions = (
            list(direction)
            if isinstance(direction, list | tuple) or (OmegaConf.is_list(direction))
            else [direction]
        )
        self.n_trials, self.n_jobs, self.seed = int(n_trials), max(1, int(n_jobs)), seed
        self.params = dict(params or {})
        if pruner is not None and storage is None:
            raise ValueError("hydra.sweeper.pruner needs a storage (trials report through it)")

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        raw = OmegaConf.to_container(config.hydra.sweeper, resolve=False).get("storage")
        try:  # typed on the command line or in a file: Hydra saves it
            refuse_saved_password(raw, "hydra.sweeper.storage")
        except ConfigError as e:
            raise ValueError(str(e)) from None
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        raw_sweep = OmegaConf.to_container(config.hydra.sweep, resolve=False)
        self.subdir_pattern = str(raw_sweep.get("subdir") or "")

    def _split(self, arguments: list[str]) -> tuple[dict[str, Any], list[str]]:
        """Search space from ``params`` and sweep-syntax arguments; the rest stay fixed."""
        parser = OverridesParser.create()
        space: dict[str, Any] = {}
        for ov in parser.parse_overrides([f"{k}={v}" for k, v in self.params.items()]):
            space[ov.get_key_element()] = _distribution(ov.get_key_element(), ov.value())
        fixed = []
        for ov in parser.parse_overrides(arguments):
            if ov.is_sweep_override():
                space[ov.get_key_element()] = _distribution(ov.get_key_element(), ov.value())
            else:
                fixed.append(ov.input_line)
        return space, fixed

    def sweep(self, arguments: list[str]) -> None:

        space, fixed = self._split(arguments)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        study = self._create_study()
        start = len(study.trials)
        if start:
            log.info("resuming study %r: %d earlier trials", self.study_name, start)
        log.info("study %r: %d trials over %s", self.study_name, self.n_trials, list(space))
        if self.storage is not None:  # trials reach the study through their environment
            os.environ[TRIAL_STORAGE_ENV] = str(self.storage)
        done = 0
        while done < self.n_trials:
            batch = [self._ask(study, space) for _ in range(min(self.n_jobs, self.n_trials - done))]
            overrides = [
                tuple(fixed)
                + tuple(f"{k}={v}" for k, v in t.params.items())
                + self._pruning_overrides(t)
                + self._folder_override(t)
                for t in batch
            ]
            returns = self.launcher.launch(overrides, initial_job_idx=start + done)
            for trial, ret in zip(batch, returns, strict=True):
                self._tell(study, trial, ret)
            done += len(batch)
        self._summarise(study)

    def _ask(self, study: Any, space: dict[str, Any]) -> Any:
        """A new trial whose parameters come from a sampler seeded for its trial number.

        A sampler seeded once per process restarts from the same state on every resume, and
        two workers with one seed draw the same values; trial numbers are unique in a study.
        """
        trial = study.ask()
        study.sampler = self.sampler(seed=_trial_seed(self.seed, trial.number))
        for name, dist in space.items():
            _suggest(trial, name, dist)
        return trial

    def _create_study(self, attempts: int = 6) -> Any:
        """Create or load the study. Workers started together on a fresh database race to
        create Optuna's tables; the loser retries after a short random wait."""
        import random
        import time

        import optuna

        for i in range(attempts):
            try:
                return optuna.create_study(
                    study_name=self.study_name,
                    storage=open_storage(self.storage),
                    sampler=self.sampler(seed=self.seed),
                    directions=self.directions,
                    load_if_exists=True,
                    pruner=self.pruner or optuna.pruners.NopPruner(),
                )
            except Exception as e:  # SQLAlchemy integrity / operational errors from the race
                if self.storage is None or i == attempts - 1:
                    raise
                log.warning(
                    "creating study %r failed (%s); retrying", self.study_name, type(e).__name__
                )
                time.sleep(0.5 + random.random())
        raise AssertionError("unreachable")

    def _folder_override(self, trial: Any) -> tuple[str, ...]:
        """The trial's folder named by its Optuna trial number, which the storage hands out
        once per study. Hydra's job number counts per sweeper process, so two workers on one
        study and one sweep folder (two shells, or a cluster's shared filesystem) would both
        start at ``trial_0`` and overwrite each other's ``.hydra/``."""
        if "${hydra.job.num}" not in self.subdir_pattern:
            return ()  # a folder pattern of the user's own (e.g. lr_${optimizer.lr})
        subdir = self.subdir_pattern.replace("${hydra.job.num}", str(trial.number))
        return (f"hydra.sweep.subdir={subdir}",)

    def _pruning_overrides(self, trial: Any) -> tuple[str, ...]:
        if self.pruner is None:
            return ()
        # No storage URL here: it may hold credentials, and this override is saved with the
        # trial's config and logged to W&B. Trials read it from TRIAL_STORAGE_ENV.
        spec = (f"{{_target_:neurecon.train.pruning.PruningCallback,"
                f"study:'{self.study_name}',trial_id:{trial._trial_id}}}")  # fmt: skip
        return (f"++callbacks.prune={spec}",)

    def _tell(self, study: Any, trial: Any, ret: Any) -> None:
        import optuna

        try:
            value = ret.return_value  # re-raises the job's exception when it failed
            values = list(value) if isinstance(value, list | tuple) else [value]
            if len(values) != len(self.directions) or not all(
                isinstance(v, int | float) and math.isfinite(v) for v in values
            ):
                raise ValueError(
                    f"objective {value!r} is not {len(self.directions)} finite number(s)"
                )
            study.tell(trial, values if len(values) > 1 else values[0])
        except optuna.TrialPruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            log.info("trial %d pruned", trial.number)
        except Exception as e:  # a crashed or diverged trial must not end the sweep
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            log.warning("trial %d failed: %s: %s", trial.number, type(e).__name__, e)

    def _summarise(self, study: Any) -> None:
        from neurecon.eval.tables import markdown_table

        trials = study.trials
        keys = sorted({k for t in trials for k in t.params})
        n_values = len(self.directions)
        rows = [
            [t.number, t.state.name, *(t.values or [None] * n_values),
             *[t.params.get(k) for k in keys]]
            for t in trials
        ]  # fmt: skip
        names = ["value"] if n_values == 1 else [f"value_{i}" for i in range(n_values)]
        header = ["trial", "state", *names, *keys]
        shown = [
            ["" if x is None else (f"{x:.5g}" if isinstance(x, float) else str(x)) for x in r]
            for r in rows
        ]
        lines = [markdown_table(header, shown).rstrip("\n")]
        complete = [t for t in trials if t.state.name == "COMPLETE"]
        if complete and n_values == 1:
            lines.append(
                f"best: trial {study.best_trial.number}, value {study.best_value:.5g}, "
                f"params {study.best_params}"
            )
        elif complete:
            front = ", ".join(f"trial {t.number} {t.values}" for t in study.best_trials)
            lines.append(f"Pareto front: {front}")
        table = "\n".join(lines)
        log.info("sweep summary (%d trials):\n%s", len(trials), table)
        frame = pd.DataFrame(rows, columns=header, dtype=object)  # ints stay ints
        atomic_write(self.sweep_dir / "trials.csv", lambda p: frame.to_csv(p, index=False))
