"""``hydra/sweeper=neurecon_optuna`` (also ``hydra/sweeper=optuna`` when hydra-optuna-sweeper is
not installed): Optuna on a current release, reading hydra-optuna-sweeper 1.3's configs as they
are written:

- the same keys and defaults: ``sampler`` (``hydra/sweeper/sampler=tpe|random|cmaes|nsgaii|
  grid|qmc|gp|bruteforce``, or any ``_target_`` node, with its own ``seed``), ``direction``
  (``minimize``), ``storage``, ``study_name`` (null: Optuna names it), ``n_trials`` (20),
  ``n_jobs`` (2), ``max_failure_rate`` (0.0), ``params``, ``custom_search_space`` and the
  deprecated ``search_space``;
- the same search-space grammar: a plain value under ``params`` is fixed, ``range(a, b)``
  includes b, a float ``range`` is a float step, ``shuffle(...)`` and ``choice(...)`` are
  categorical, and a value fixed on the command line for a swept key wins;
- the same results file, ``<sweep dir>/optimization_results.yaml`` (best params and value, or
  the Pareto front).

On top of upstream:

- a persistent study (``load_if_exists``): re-running the same command resumes it;
- a resumed or parallel worker continues the search and never repeats it: the sampler is
  seeded per trial from the seed and the trial's number, which the storage hands out once per
  study (a fixed seed still makes the whole sweep reproducible);
- trial folders are named by the Optuna trial number (``trial_${hydra.job.num}`` gets it), so
  resumed runs and parallel workers on one study and one sweep folder never collide;
- a table of all trials at the end, also written to ``<sweep dir>/trials.csv``;
- pruning (``hydra/sweeper/pruner=median|hyperband``) from validation PSNR;
- storage specs and credentials as in :mod:`neurecon.storage` (a journal file by default; a
  password on the command line is refused, since Hydra writes overrides to disk).

hydra-optuna-sweeper 1.3 pins optuna<3 (and its RDB storage needs SQLAlchemy<2), and offers no
pruning; that is why this plugin exists.
"""

# No `from __future__ import annotations`: Hydra's plugin scan runs this module before it is in
# sys.modules, where dataclasses cannot resolve string annotations.
import functools
import importlib.util
import logging
import math
import os
import sys
import types
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, NoReturn, Optional  # noqa: UP035  (OmegaConf typing)

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

# neurecon (and with it torch), optuna and pandas are imported where used: Hydra's plugin scan
# imports this module at the start of *every* Hydra app in the environment.

log = logging.getLogger(__name__)

UPSTREAM_PACKAGE = "hydra_plugins.hydra_optuna_sweeper"
UPSTREAM_MODULE = f"{UPSTREAM_PACKAGE}.optuna_sweeper"


def _upstream_installed() -> bool:
    """Whether hydra-optuna-sweeper (which needs optuna<3) is installed: then its own plugin
    answers to ``hydra/sweeper=optuna``. Our stand-in module (below) does not count."""
    mod = sys.modules.get(UPSTREAM_PACKAGE)
    if mod is not None:
        return not getattr(mod, "__neurecon_alias__", False)
    return importlib.util.find_spec(UPSTREAM_PACKAGE) is not None


UPSTREAM_INSTALLED = _upstream_installed()


def motpe_removed(**_: Any) -> NoReturn:
    """``hydra/sweeper/sampler=motpe``: Optuna 4 removed MOTPESampler."""
    raise ValueError(
        "hydra/sweeper/sampler=motpe: Optuna 4 removed MOTPESampler; "
        "use hydra/sweeper/sampler=tpe, which handles several objectives"
    )


def _node(target: str, **kwargs: Any) -> dict[str, Any]:
    return {"_target_": target, **kwargs}


# Sampler nodes carry their own seed, as upstream's do; the sweeper builds the sampler itself,
# once per trial with a seed derived from that one (see ``_make_sampler``).
SAMPLERS = {
    name: _node(f"optuna.samplers.{cls}", seed=None)
    for name, cls in (
        ("tpe", "TPESampler"),
        ("random", "RandomSampler"),
        ("cmaes", "CmaEsSampler"),  # needs the cmaes package (the sweep extra)
        ("nsgaii", "NSGAIISampler"),  # upstream's name
        ("nsga2", "NSGAIISampler"),  # neurecon's earlier name
        ("grid", "GridSampler"),  # its grid is the search space (discrete parameters only)
        ("qmc", "QMCSampler"),
        ("gp", "GPSampler"),
        ("bruteforce", "BruteForceSampler"),
    )
}
# Samplers that walk one seeded sequence across trials: built once, not reseeded per trial.
SHARED_SEQUENCE = {"QMCSampler", "GridSampler"}
SAMPLERS["motpe"] = _node(f"{__name__}.motpe_removed")
PRUNERS = {
    # Two finished trials before judging, and from the first report on: sweeps here are short.
    "median": _node("optuna.pruners.MedianPruner", n_startup_trials=2, n_warmup_steps=0),
    "hyperband": _node("optuna.pruners.HyperbandPruner"),
}


@dataclass
class NeureconOptunaSweeperConf:
    _target_: str = "hydra_plugins.neurecon_optuna_sweeper.sweeper.NeureconOptunaSweeper"
    # The sweeper builds the sampler and the pruner from their nodes itself (per-trial seeds,
    # the grid's search space), so Hydra hands them over unbuilt.
    _recursive_: bool = False
    defaults: List[Any] = field(  # noqa: UP006
        default_factory=lambda: ["_self_", {"sampler": "tpe"}, {"pruner": None}]
    )
    sampler: Any = None  # a sampler node: hydra/sweeper/sampler=tpe|random|cmaes|...
    direction: Any = "minimize"  # or a list, one per objective (upstream's default)
    storage: Any = None  # null: in memory; PATH.journal, sqlite:///path.db, postgresql://...
    study_name: Optional[str] = None  # noqa: UP045  (null: Optuna names the study)
    n_trials: int = 20
    n_jobs: int = 2  # trials launched together (with a parallel launcher, e.g. joblib)
    # A batch of n_jobs trials whose share of failures exceeds this ends the sweep (after the
    # summary); 1.0 records every failure and goes on.
    max_failure_rate: float = 0.0
    # {} rather than upstream's null, so that a command-line dict merges into them.
    search_space: Dict[str, Any] = field(default_factory=dict)  # noqa: UP006  (deprecated)
    custom_search_space: Optional[str] = None  # noqa: UP045  (dotted path: f(cfg, trial))
    params: Dict[str, Any] = field(default_factory=dict)  # noqa: UP006
    seed: Optional[int] = None  # noqa: UP045  (neurecon's key; or the sampler node's seed)
    pruner: Any = None  # null, or a pruner node (hydra/sweeper/pruner=median|hyperband)


@dataclass
class OptunaSweeperConf(NeureconOptunaSweeperConf):
    """hydra-optuna-sweeper's ``hydra/sweeper=optuna``, run by neurecon's sweeper."""

    _target_: str = f"{UPSTREAM_MODULE}.OptunaSweeper"


_cs = ConfigStore.instance()
_cs.store(group="hydra/sweeper", name="neurecon_optuna", node=NeureconOptunaSweeperConf,
          provider="neurecon")  # fmt: skip
if not UPSTREAM_INSTALLED:
    _cs.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="neurecon")
# hydra-optuna-sweeper 1.3's own sampler nodes (same names, seeds inside) serve both plugins.
_UPSTREAM_SAMPLERS = {"tpe", "random", "cmaes", "nsgaii", "motpe", "qmc", "grid"}
for _name, _n in SAMPLERS.items():
    if not (UPSTREAM_INSTALLED and _name in _UPSTREAM_SAMPLERS):
        _cs.store(group="hydra/sweeper/sampler", name=_name, node=_n, provider="neurecon")
for _name, _n in PRUNERS.items():
    _cs.store(group="hydra/sweeper/pruner", name=_name, node=_n, provider="neurecon")


def _distribution(override: Override) -> Any:
    """An Optuna distribution for a sweep override, or the value (a string) of a fixed one.

    hydra-optuna-sweeper's grammar: ``range(a, b[, step])`` includes b and is a float step when
    any of its numbers is a float; ``shuffle(...)`` and ``choice(...)`` are categorical;
    ``interval(a, b)`` is int when both ends are ints; ``tag(log, ...)`` is a log scale.
    """
    import optuna.distributions as d

    key = override.get_key_element()
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value = override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        choices = list(override.sweep_iterator(transformer=Transformer.encode))
        bad = [c for c in choices if not isinstance(c, str | int | float | bool)]
        if bad:
            raise ValueError(f"hydra.sweeper.params.{key}: choices must be scalars, got {bad}")
        return d.CategoricalDistribution(choices)
    if override.is_range_sweep():
        start, stop, step = value.start, value.stop, value.step
        if any(isinstance(x, float) for x in (start, stop, step)):
            return d.FloatDistribution(float(start), float(stop), step=float(step))
        return d.IntDistribution(int(start), int(stop), step=int(step))
    if override.is_interval_sweep():
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return d.IntDistribution(value.start, value.end, log=log_scale)
        return d.FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise ValueError(f"hydra.sweeper.params.{key}: unsupported sweep {override.input_line!r}")


def _from_search_space(name: str, spec: Any) -> Any:
    """Upstream's deprecated ``search_space`` entry ``{type, low, high, log, step, choices}``."""
    import optuna.distributions as d

    spec = dict(spec)
    kind = str(spec.get("type", "")).split(".")[-1]  # "float", or "DistributionType.float"
    low, high, step, log_scale = (spec.get(k) for k in ("low", "high", "step", "log"))
    if kind == "categorical" and spec.get("choices") is not None:
        return d.CategoricalDistribution(list(spec["choices"]))
    if kind == "int" and low is not None and high is not None:
        return d.IntDistribution(int(low), int(high), step=int(step or 1), log=bool(log_scale))
    if kind == "float" and low is not None and high is not None:
        step = None if step is None else float(step)
        return d.FloatDistribution(float(low), float(high), step=step, log=bool(log_scale))
    raise ValueError(
        f"hydra.sweeper.search_space.{name}: {spec} is not a categorical (choices), int or "
        "float (low, high) distribution"
    )


def _grid_choices(name: str, dist: Any) -> list[Any]:
    """The grid points of a discrete distribution, both ends included."""
    import optuna.distributions as d

    if isinstance(dist, d.CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, d.IntDistribution) and not dist.log:
        return list(range(dist.low, dist.high + 1, dist.step))
    if isinstance(dist, d.FloatDistribution) and dist.step is not None:
        n = round((dist.high - dist.low) / dist.step)
        return [dist.low + i * dist.step for i in range(n + 1)]
    raise ValueError(
        f"hydra.sweeper.params.{name}: the grid sampler needs discrete values "
        "(choice, range, or an int interval), not a continuous one"
    )


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


def _as_container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _built(node: Any, key: str) -> Any:
    """A pruner node, instantiated; a bare name is the old string switch: say what to write."""
    from hydra.utils import instantiate

    if isinstance(node, str):
        raise ValueError(
            f"hydra.sweeper.{key}={node!r}: {key}s are _target_ nodes now; choose one with "
            f"hydra/sweeper/{key}={node}"
        )
    node = _as_container(node)
    return instantiate(node) if isinstance(node, dict) else node


class NeureconOptunaSweeper(Sweeper):
    def __init__(
        self,
        sampler: Any = None,
        direction: Any = "minimize",
        storage: Any = None,
        study_name: str | None = None,
        n_trials: int = 20,
        n_jobs: int = 2,
        max_failure_rate: float = 0.0,
        search_space: Any = None,
        custom_search_space: str | None = None,
        params: Any = None,
        seed: Any = None,
        pruner: Any = None,
    ) -> None:
        from hydra.utils import get_method

        sampler = _as_container(sampler if sampler is not None else SAMPLERS["tpe"])
        if isinstance(sampler, str):
            raise ValueError(
                f"hydra.sweeper.sampler={sampler!r}: samplers are _target_ nodes now; choose "
                f"one with hydra/sweeper/sampler={sampler}"
            )
        self.sampler_node = sampler  # a node (dict), a partial, or a sampler instance
        self.pruner = _built(pruner, "pruner")
        self.study_name, self.storage = study_name, storage
        direction = _as_container(direction)
        directions = list(direction) if isinstance(direction, list | tuple) else [direction]
        self.directions = [str(getattr(d, "name", d)) for d in directions]  # upstream's enum
        self.n_trials, self.n_jobs = int(n_trials), max(1, int(n_jobs))
        if not 0.0 <= float(max_failure_rate) <= 1.0:
            raise ValueError(f"hydra.sweeper.max_failure_rate={max_failure_rate}: not in [0, 1]")
        self.max_failure_rate = float(max_failure_rate)
        self.custom_search_space = get_method(custom_search_space) if custom_search_space else None
        self.params = dict(_as_container(params) or {})
        if search_space:
            if params:
                warnings.warn(
                    "both hydra.sweeper.params and hydra.sweeper.search_space are set; "
                    "hydra.sweeper.params defines the search space",
                    stacklevel=2,
                )
            else:
                warnings.warn(
                    "hydra.sweeper.search_space is deprecated (as in hydra-optuna-sweeper): "
                    "write the search space under hydra.sweeper.params",
                    DeprecationWarning,
                    stacklevel=2,
                )
                self.params = {
                    str(k): _from_search_space(str(k), v)
                    for k, v in _as_container(search_space).items()
                }
        self.seed = self._base_seed(seed)
        self.grid: dict[str, list[Any]] | None = None  # GridSampler's, set by sweep()
        self.config: DictConfig | None = None  # set by setup()
        if pruner is not None and storage is None:
            raise ValueError("hydra.sweeper.pruner needs a storage (trials report through it)")

    def _base_seed(self, seed: Any) -> int | None:
        """``hydra.sweeper.seed`` or the sampler node's own ``seed`` (upstream's place)."""
        node = self.sampler_node
        own = node.get("seed") if isinstance(node, dict) else None
        if isinstance(node, functools.partial):
            own = node.keywords.get("seed")
        if seed is not None and own is not None and int(seed) != int(own):
            raise ValueError(
                f"hydra.sweeper.seed={seed} and hydra.sweeper.sampler.seed={own} disagree; "
                "set one of them"
            )
        return None if seed is None and own is None else int(own if seed is None else seed)

    def _make_sampler(self, seed: int | None, grid: dict[str, list[Any]] | None) -> Any:
        """The sampler built from its node with ``seed`` (and the grid, for GridSampler)."""
        from hydra.utils import instantiate

        node = self.sampler_node
        extra: dict[str, Any] = {} if grid is None else {"search_space": grid}
        if isinstance(node, dict):
            node = {k: v for k, v in node.items() if k not in ("_partial_", "seed")}
            return instantiate(node, seed=seed, **extra)
        if isinstance(node, functools.partial):
            return node(**{**extra, "seed": seed})
        return node  # an instance (from Python): used as it is, unseeded per trial

    def _sampler_class(self) -> str:
        node = self.sampler_node
        if isinstance(node, dict):
            return str(node.get("_target_", "")).rsplit(".", 1)[-1]
        return getattr(getattr(node, "func", node), "__name__", type(node).__name__)

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        from neurecon.errors import ConfigError
        from neurecon.storage import refuse_saved_password

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

    def _split(self, arguments: list[str]) -> tuple[dict[str, Any], dict[str, str], list[str]]:
        """(search space, fixed parameters, other overrides) from ``params`` and the command
        line. As upstream: a plain value under ``params`` is a fixed parameter, a command-line
        sweep replaces the ``params`` entry, and a command-line value fixes a swept key."""
        import optuna.distributions as d

        parser = OverridesParser.create()
        space: dict[str, Any] = {}
        fixed: dict[str, str] = {}
        for name, value in self.params.items():
            if isinstance(value, d.BaseDistribution):  # from the deprecated search_space
                space[name] = value
                continue
            (ov,) = parser.parse_overrides([f"{name}={value}"])
            dist = _distribution(ov)
            (space if isinstance(dist, d.BaseDistribution) else fixed)[name] = dist
        rest = []
        for ov in parser.parse_overrides(arguments):
            key = ov.get_key_element()
            if ov.is_sweep_override():
                fixed.pop(key, None)
                space[key] = _distribution(ov)
            elif key in space or key in fixed:
                space.pop(key, None)
                fixed[key] = ov.get_value_element_as_str()
            else:
                rest.append(ov.input_line)
        return space, fixed, rest

    def sweep(self, arguments: list[str]) -> None:
        space, fixed, rest = self._split(arguments)
        grid = None
        if self._sampler_class() == "GridSampler":
            grid = {name: _grid_choices(name, dist) for name, dist in space.items()}
            size = math.prod(len(v) for v in grid.values())
            if size < self.n_trials:
                log.info("grid sampler: n_trials %d -> %d, the grid's size", self.n_trials, size)
                self.n_trials = size
        self.grid = grid
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        study = self._create_study()
        self.study_name = study.study_name  # Optuna's name when study_name is null
        start = len(study.trials)
        if start:
            log.info("resuming study %r: %d earlier trials", self.study_name, start)
        log.info(
            "study %r (%s, %s): %d trials over %s, fixed %s",
            self.study_name, self._sampler_class(), self.directions, self.n_trials,
            list(space), fixed,
        )  # fmt: skip
        if self.storage is not None:  # trials reach the study through their environment
            from neurecon.storage import TRIAL_STORAGE_ENV

            os.environ[TRIAL_STORAGE_ENV] = str(self.storage)
        done = 0
        while done < self.n_trials:
            n = min(self.n_jobs, self.n_trials - done)
            batch = [self._ask(study, space, fixed) for _ in range(n)]
            overrides = [
                tuple(rest)
                + tuple(f"{k}={v}" for k, v in {**t.params, **fixed}.items())
                + self._pruning_overrides(t)
                + self._folder_override(t)
                for t in batch
            ]
            returns = self.launcher.launch(overrides, initial_job_idx=start + done)
            failures = [
                e for trial, ret in zip(batch, returns, strict=True)
                if (e := self._tell(study, trial, ret)) is not None
            ]  # fmt: skip
            done += len(batch)
            if len(failures) / len(batch) > self.max_failure_rate:
                log.error(
                    "%d of %d trials in a batch failed, above hydra.sweeper.max_failure_rate=%g",
                    len(failures), len(batch), self.max_failure_rate,
                )  # fmt: skip
                self._summarise(study)
                raise failures[0]
        self._summarise(study)

    def _ask(self, study: Any, space: dict[str, Any], fixed: dict[str, str]) -> Any:
        """A new trial whose parameters come from a sampler seeded for its trial number.

        A sampler seeded once per process restarts from the same state on every resume, and
        two workers with one seed draw the same values; trial numbers are unique in a study.
        QMC and the grid are the exceptions: their sequence (the grid's order is shuffled by
        its seed) is one sampler's, shared by every trial and every worker.
        """
        trial = study.ask()
        if self._sampler_class() not in SHARED_SEQUENCE:
            study.sampler = self._make_sampler(_trial_seed(self.seed, trial.number), self.grid)
        for name, dist in space.items():
            _suggest(trial, name, dist)
        for name, value in fixed.items():
            trial.set_user_attr(name, value)
        if self.custom_search_space is not None:
            self.custom_search_space(self.config, trial)
        overlap = set(trial.params) & set(fixed)
        if overlap:
            raise ValueError(f"hydra.sweeper: {sorted(overlap)} are both fixed and searched")
        return trial

    def _create_study(self, attempts: int = 6) -> Any:
        """Create or load the study. Workers started together on a fresh database race to
        create Optuna's tables; the loser retries after a short random wait."""
        import random
        import time

        import optuna

        from neurecon.storage import open_storage

        seed = self.seed
        if seed is None and self._sampler_class() in SHARED_SEQUENCE:
            # Every worker and every resume must walk one sequence: seed it from the study.
            seed = zlib.crc32(str(self.study_name).encode())
        for i in range(attempts):
            try:
                return optuna.create_study(
                    study_name=self.study_name,
                    storage=open_storage(self.storage),
                    sampler=self._make_sampler(seed, self.grid),
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

    def _tell(self, study: Any, trial: Any, ret: Any) -> Exception | None:
        """Record the trial's outcome; the exception of a failed trial, None otherwise."""
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
        except optuna.TrialPruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            log.info("trial %d pruned", trial.number)
            return None
        except Exception as e:  # a crashed or diverged trial is recorded as FAIL
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            log.warning("trial %d failed: %s: %s", trial.number, type(e).__name__, e)
            return e
        try:
            study.tell(trial, values if len(values) > 1 else values[0])
        except RuntimeError as e:
            # GridSampler stops the study once the grid is done, which outside optimize()
            # raises after the trial is recorded (upstream ignores it the same way).
            if "Study.stop" not in str(e):
                raise
        return None

    def _summarise(self, study: Any) -> None:
        import pandas as pd

        from neurecon.atomic import atomic_write
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
        results: dict[str, Any] = {"name": "optuna", "study_name": self.study_name}
        if complete and n_values == 1:
            best = study.best_trial
            lines.append(f"best: trial {best.number}, value {best.value:.5g}, params {best.params}")
            results.update(best_params=best.params, best_value=best.value)
        elif complete:
            front = ", ".join(f"trial {t.number} {t.values}" for t in study.best_trials)
            lines.append(f"Pareto front: {front}")
            results["solutions"] = [
                {"params": t.params, "values": t.values} for t in study.best_trials
            ]
        table = "\n".join(lines)
        log.info("sweep summary (%d trials):\n%s", len(trials), table)
        frame = pd.DataFrame(rows, columns=header, dtype=object)  # ints stay ints
        atomic_write(self.sweep_dir / "trials.csv", lambda p: frame.to_csv(p, index=False))
        # hydra-optuna-sweeper's results file, same keys (no best when nothing completed).
        atomic_write(
            self.sweep_dir / "optimization_results.yaml",
            lambda p: OmegaConf.save(OmegaConf.create(results), p),
        )


_announced = False


class OptunaSweeper(NeureconOptunaSweeper):
    """Answers to hydra-optuna-sweeper's ``_target_`` when that package is not installed."""

    def __init__(self, **kwargs: Any) -> None:
        global _announced
        if not _announced:
            _announced = True
            log.warning(
                "hydra-optuna-sweeper is not installed: neurecon's Optuna sweeper "
                "(hydra_plugins.neurecon_optuna_sweeper) runs this hydra/sweeper=optuna config"
            )
        super().__init__(**kwargs)


def _stand_in_for_upstream() -> None:
    """Make ``hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper`` (the
    ``_target_`` upstream's configs name) this module's ``OptunaSweeper``: Hydra registers a
    plugin under the module and name its class reports, and imports the ``_target_``."""
    OptunaSweeper.__module__ = UPSTREAM_MODULE
    package = sys.modules.get(UPSTREAM_PACKAGE) or types.ModuleType(UPSTREAM_PACKAGE)
    package.__path__ = []  # a package, holding only the module below
    package.__neurecon_alias__ = True
    module = sys.modules.get(UPSTREAM_MODULE) or types.ModuleType(UPSTREAM_MODULE)
    module.OptunaSweeper, module.OptunaSweeperConf = OptunaSweeper, OptunaSweeperConf
    package.optuna_sweeper = module
    sys.modules[UPSTREAM_PACKAGE], sys.modules[UPSTREAM_MODULE] = package, module
    sys.modules["hydra_plugins"].hydra_optuna_sweeper = package


if UPSTREAM_INSTALLED:
    del OptunaSweeper  # upstream's own plugin answers to its name
else:
    _stand_in_for_upstream()


def register_plugins() -> None:
    """Register the sweeper(s) by hand, where Hydra's scan of ``hydra_plugins`` cannot see this
    package (an editable install, run from outside the checkout); twice is harmless."""
    Plugins.instance().register(NeureconOptunaSweeper)
    if not UPSTREAM_INSTALLED:
        Plugins.instance().register(globals()["OptunaSweeper"])
