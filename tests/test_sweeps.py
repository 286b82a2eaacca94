"""Real tiny sweeps through the command line (lightning-hydra-template style)."""

import csv
import os
import subprocess
import sys

import pytest
from conftest import COARSE_GRID, REPO, TINY
from test_logging import _wandb_runs

from neurecon.storage import open_storage

optuna = pytest.importorskip("optuna")
FAST = [o for o in TINY if o != "logger=none"] + [
    "dataset.shape=sphere",
    "trainer.max_steps=15",
    "callbacks.log.every=5",
    *COARSE_GRID,
]


def _sweep(sweep_dir, *args, env=None):
    env = {**os.environ, "WANDB_SILENT": "true", **(env or {})}
    env.pop("WANDB_API_KEY", None)
    return subprocess.run(
        [sys.executable, "train.py", "-m", f"hydra.sweep.dir={sweep_dir}", *FAST, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )


def _study(sweep_dir, name):
    return optuna.load_study(study_name=name, storage=open_storage(f"{sweep_dir}/optuna.journal"))


def test_lr_inv_s_sweep_logs_every_trial_to_one_wandb_group(tmp_path):
    pytest.importorskip("wandb")
    sweep_dir = tmp_path / "lr_sweep"
    res = _sweep(
        sweep_dir,
        "sweep=lr_inv_s",
        "hydra.sweeper.n_trials=4",
        "logger=wandb",
        "logger.mode=offline",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    study = _study(sweep_dir, "lr_inv_s")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    runs = _wandb_runs(sweep_dir)
    assert len(runs) == 4 and {r["group"] for r in runs} == {"lr_sweep"}
    psnrs = sorted(t.value for t in study.trials)
    assert sorted(r["summary"]["test/psnr"] for r in runs) == pytest.approx(psnrs)
    for r in runs:
        keys = set().union(*r["history"])
        assert {"test/psnr", "test/ssim", "chamfer/mean"} <= keys
        assert {"test/psnr", "test/ssim", "chamfer/mean"} <= set(r["summary"])
        assert "optimizer.lr" in r["config"] and "field.variance_init" in r["config"]
    assert "sweep summary (4 trials)" in res.stderr + res.stdout


def test_rerunning_the_same_sweep_resumes_the_study(tmp_path):
    args = ["sweep=lr_inv_s", "hydra.sweeper.n_trials=2", "logger=none", "eval.mesh_resolution=0"]
    for _ in range(2):
        res = _sweep(tmp_path / "s", *args)
        assert res.returncode == 0, res.stderr[-3000:]
    trials = _study(tmp_path / "s", "lr_inv_s").trials
    assert len(trials) == 4
    # The resumed sweep continues the search: no parameter set is drawn twice.
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4
    assert sorted(p.name for p in (tmp_path / "s").glob("trial_*")) == [
        "trial_0",
        "trial_1",
        "trial_2",
        "trial_3",
    ]


def test_sampler_seeds_per_trial_are_reproducible_and_never_repeat():
    """The sweeper's ask: a fixed seed gives the same sequence in a fresh study, a resumed one
    continues it, and two workers drawing in turn from one study never collide."""
    from optuna.distributions import FloatDistribution

    from hydra_plugins.neurecon_optuna_sweeper.sweeper import SAMPLERS, NeureconOptunaSweeper

    space = {"lr": FloatDistribution(1e-4, 1e-2, log=True), "v": FloatDistribution(0.1, 0.5)}

    def sweeper(seed=0, sampler="tpe"):
        return NeureconOptunaSweeper(
            sampler=SAMPLERS[sampler], direction="maximize", study_name="s", n_trials=4, seed=seed
        )

    def draw(study, w, n):
        out = []
        for _ in range(n):
            t = w._ask(study, space, {})
            study.tell(t, t.params["v"])
            out.append(tuple(sorted(t.params.items())))
        return out

    for sampler in ("tpe", "random"):
        a = draw(optuna.create_study(direction="maximize"), sweeper(sampler=sampler), 6)
        b = draw(optuna.create_study(direction="maximize"), sweeper(sampler=sampler), 6)
        assert a == b and len(set(a)) == 6  # reproducible, nothing repeated
        study = optuna.create_study(direction="maximize")
        first = draw(study, sweeper(sampler=sampler), 3)
        resumed = draw(study, sweeper(sampler=sampler), 3)  # a new process, same seed
        assert len(set(first + resumed)) == 6
        study = optuna.create_study(direction="maximize")
        w1, w2 = sweeper(sampler=sampler), sweeper(sampler=sampler)
        both = [p for _ in range(3) for p in draw(study, w1, 1) + draw(study, w2, 1)]
        assert len(set(both)) == 6


def test_failing_and_diverging_trials_are_recorded_and_the_sweep_goes_on(tmp_path):
    res = _sweep(
        tmp_path / "f",
        "sweep=lr_inv_s",
        "hydra.sweeper.n_trials=6",
        "hydra/sweeper/sampler=random",
        "logger=none",
        "eval.mesh_resolution=0",  # the trials' states are the point, not their meshes
        "optimizer.lr=choice(-1.0,0.001,0.002,0.003)",  # -1: an invalid config value
        # A test-side callback (tests/faults.py): NaN loss from iteration 1 on, or never.
        "+callbacks.faults._target_=faults.FaultInjection",
        "+callbacks.faults.nan_loss_from=choice(1,100000,200000)",
        env={"PYTHONPATH": str(REPO / "tests")},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    trials = _study(tmp_path / "f", "lr_inv_s").trials
    states = [t.state.name for t in trials]
    assert len(trials) == 6 and "FAIL" in states and "COMPLETE" in states
    for t in trials:
        nan_from = next(v for k, v in t.params.items() if k.endswith("nan_loss_from"))
        bad = t.params["optimizer.lr"] < 0 or nan_from == 1
        assert (t.state.name == "FAIL") == bad, (t.params, t.state)
    with open(tmp_path / "f" / "trials.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 6


def test_multiobjective_sweep_reports_a_pareto_front(tmp_path):
    res = _sweep(tmp_path / "m", "sweep=multiobjective", "hydra.sweeper.n_trials=3", "logger=none")
    assert res.returncode == 0, res.stderr[-3000:]
    trials = _study(tmp_path / "m", "multiobjective").trials
    assert all(t.state.name == "COMPLETE" and len(t.values) == 2 for t in trials)
    assert "Pareto front" in res.stderr + res.stdout


def test_grid_lr_uses_hydras_basic_sweeper(tmp_path):
    """Hydra's own sweeper: one folder per value, and W&B groups the runs as for Optuna."""
    pytest.importorskip("wandb")
    res = _sweep(
        tmp_path / "g",
        "sweep=grid_lr",
        "logger=wandb",
        "logger.mode=offline",
        "hydra.sweep.subdir=lr_${optimizer.lr}",
        "eval.mesh_resolution=0",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "g").iterdir() if p.name.startswith("lr_")) == [
        "lr_0.001",
        "lr_0.005",
        "lr_0.01",
    ]
    runs = _wandb_runs(tmp_path / "g")
    assert len(runs) == 3 and {r["group"] for r in runs} == {"g"}
    assert sorted(r["config"]["optimizer.lr"] for r in runs) == [1e-3, 5e-3, 1e-2]
    assert all("test/psnr" in r["summary"] for r in runs)


def test_pruner_stops_hopeless_trials_from_validation_psnr(tmp_path):
    res = _sweep(
        tmp_path / "p",
        "sweep=lr_inv_s",
        "hydra.sweeper.n_trials=6",
        "hydra/sweeper/sampler=random",
        "hydra.sweeper.seed=2",  # draws two good trials first: the median needs them
        "hydra/sweeper/pruner=median",
        "logger=none",
        "eval.mesh_resolution=0",
        "callbacks.validate.every=5",
        "trainer.max_steps=20",
        "optimizer.lr=choice(0.005,1e-9)",  # 1e-9: learns nothing, a hopeless trial
    )
    assert res.returncode == 0, res.stderr[-3000:]
    trials = _study(tmp_path / "p", "lr_inv_s").trials
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert pruned, [(t.params, t.state.name, t.intermediate_values) for t in trials]
    for t in pruned:
        assert t.params["optimizer.lr"] == 1e-9 and t.intermediate_values  # reported, then cut
    assert all(t.state.name == "COMPLETE" for t in trials if t.params["optimizer.lr"] == 0.005)
