"""hydra-optuna-sweeper's configs, run unchanged by neurecon's sweeper as tiny real sweeps.

Each case is a real ``-m`` run of a quadratic Hydra app (``tests/apps/quadratic.py``), whose
config names upstream's sweeper (``hydra/sweeper: optuna``); every trial writes the values it
received to ``result.json``. The last tests run lightning-hydra-template's Optuna search config
through ``train.py``.
"""

import csv
import json
import math
import os
import subprocess
import sys

import pytest
from conftest import REPO, TINY
from omegaconf import OmegaConf

optuna = pytest.importorskip("optuna")
APP = REPO / "tests" / "apps" / "quadratic.py"


def _run(sweep_dir, *args, script=APP, timeout=300):
    env = {**os.environ, "SWEEP_DIR": str(sweep_dir), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _trials(sweep_dir):
    with open(sweep_dir / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def _results(sweep_dir):
    return [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("trial_*/result.json"))]


CONTINUOUS = ["x=interval(0.0, 4.0)", "y=interval(0.0, 2.0)"]
DISCRETE = ["x=choice(0, 1, 2, 3)", "y=range(0, 2)"]


@pytest.mark.parametrize(
    "sampler, space",
    [
        ("tpe", CONTINUOUS),
        ("random", CONTINUOUS),
        ("cmaes", CONTINUOUS),
        ("nsgaii", CONTINUOUS),
        ("qmc", CONTINUOUS),
        ("gp", CONTINUOUS),
        ("grid", DISCRETE),
        ("bruteforce", DISCRETE),
    ],
)
def test_each_upstream_sampler_runs_a_sweep(tmp_path, sampler, space):
    if sampler == "cmaes":
        pytest.importorskip("cmaes")
    res = _run(
        tmp_path, "-m", f"hydra/sweeper/sampler={sampler}", "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.seed=1", *space,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    # Said once (Hydra logs to stdout), not once per trial.
    assert (res.stdout + res.stderr).count("hydra-optuna-sweeper is not installed") == 1
    rows = _trials(tmp_path)
    assert [r["state"] for r in rows] == ["COMPLETE"] * 3
    got = _results(tmp_path)
    assert sorted(float(r["value"]) for r in rows) == pytest.approx(
        sorted((g["x"] - 2) ** 2 + (g["y"] - 1) ** 2 for g in got)
    )
    best = OmegaConf.load(tmp_path / "optimization_results.yaml")
    assert best.name == "optuna"
    # Upstream's default direction is minimize.
    assert best.best_value == pytest.approx(min(float(r["value"]) for r in rows))
    if sampler in ("grid", "bruteforce"):  # discrete samplers never repeat a point
        assert len({(g["x"], g["y"]) for g in got}) == 3


def test_motpe_says_it_was_removed(tmp_path):
    res = _run(tmp_path, "-m", "hydra/sweeper/sampler=motpe", *CONTINUOUS)
    assert res.returncode != 0
    assert "Optuna 4 removed MOTPESampler" in res.stderr


def test_grammar_fixed_values_inclusive_ranges_and_float_steps(tmp_path):
    res = _run(tmp_path, "-m", "+case=grammar")
    assert res.returncode == 0, res.stderr[-3000:]
    got = _results(tmp_path)
    # range(0, 2) includes 2; range(0.5, 1.5, 0.5) steps by 0.5 and includes 1.5; the grid of
    # 3 x 3 points caps n_trials=20 at 9 and visits each once; a: 7 is fixed, not searched.
    assert sorted((g["x"], g["y"]) for g in got) == sorted(
        (x, y) for x in (0.5, 1.0, 1.5) for y in (0, 1, 2)
    )
    assert {g["a"] for g in got} == {7}
    assert "a" not in _trials(tmp_path)[0]


def test_upstream_defaults_command_line_value_and_custom_search_space(tmp_path):
    res = _run(tmp_path, "-m", "+case=upstream_defaults", "x=1.25")
    assert res.returncode == 0, res.stderr[-3000:]
    got = _results(tmp_path)
    assert len(got) == 4
    assert {g["x"] for g in got} == {1.25}  # fixed on the command line: wins over the search
    assert all(0.5 <= g["y"] <= 2.0 and 0.0 <= g["w"] <= 1.0 for g in got)  # w: custom space
    assert {g["name"] for g in got} <= {"p", "q", "r s"}
    assert len({g["pid"] for g in got}) == 1  # the basic launcher runs n_jobs=2 batches inline
    best = OmegaConf.load(tmp_path / "optimization_results.yaml")
    assert best.study_name.startswith("no-name-")  # study_name: null, Optuna names it
    values = [(g["x"] - 2) ** 2 + (g["y"] - 1) ** 2 + g["w"] for g in got]
    assert best.best_value == pytest.approx(min(values))  # minimize by default
    assert set(best.best_params) == {"y", "name", "w"}


@pytest.mark.parametrize("rate, finished", [(0.0, False), (1.0, True)])
def test_max_failure_rate(tmp_path, rate, finished):
    res = _run(tmp_path, "-m", "+case=failures", f"hydra.sweeper.max_failure_rate={rate}")
    states = [r["state"] for r in _trials(tmp_path)]
    assert "FAIL" in states  # recorded either way, and summarised before stopping
    if finished:
        assert res.returncode == 0, res.stderr[-3000:]
        assert len(states) == 4
    else:
        assert res.returncode != 0 and "above fail_above" in res.stderr
        assert len(states) < 4


def test_seed_in_two_places_must_agree(tmp_path):
    res = _run(tmp_path, "-m", "hydra.sweeper.sampler.seed=1", "hydra.sweeper.seed=2", *CONTINUOUS)
    assert res.returncode != 0
    assert "hydra.sweeper.seed=2 and hydra.sweeper.sampler.seed=1 disagree" in res.stderr


# trainer.batch_rays is searched, so not fixed here (a value on the command line would win).
TRAIN_FAST = [o for o in TINY if not o.startswith(("logger=", "trainer.batch_rays="))] + [
    "logger=none",
    "dataset.shape=sphere",
    "trainer.max_steps=10",
    "eval.mesh_resolution=0",
]


@pytest.mark.parametrize(
    "config",
    [
        "lightning_template_optuna",
        # Its earlier search_space form: the same grammar, checked in the slow run.
        pytest.param("lightning_template_optuna_v1", marks=pytest.mark.slow),
    ],
)
def test_lightning_hydra_template_optuna_config_runs_through_train_py(tmp_path, config):
    """lightning-hydra-template's hparams_search file, adapted only in parameter names."""
    res = _run(
        tmp_path,
        *(["-m"] if config.endswith("v1") else []),  # the current one sets hydra.mode itself
        "--config-dir", str(REPO / "tests" / "apps"), f"+hparams_search={config}",
        "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={tmp_path}", *TRAIN_FAST,
        script=REPO / "train.py", timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    rows = _trials(tmp_path)
    assert [r["state"] for r in rows] == ["COMPLETE"] * 2
    best = OmegaConf.load(tmp_path / "optimization_results.yaml")
    assert best.best_value == pytest.approx(max(float(r["value"]) for r in rows))  # maximize
    assert {"optimizer.lr", "trainer.batch_rays", "field.hidden_dim"} <= set(best.best_params)
    for p in tmp_path.glob("*/metrics.json"):
        assert math.isfinite(json.loads(p.read_text())["test/psnr"])
