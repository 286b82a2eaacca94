"""Sweeps on a live single-node SLURM cluster (``tests/slurm/start.sh``), through
``hydra/launcher=submitit_slurm`` exactly as the README's SLURM section writes it; and the
SLURM job logic of :mod:`neurecon.cluster` on its own."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, TINY, compose_cfg
from test_sweeps import FAST, _study

from neurecon.cluster import SlurmJob, deadline_on_signal, parse_slurm_duration
from neurecon.train.callbacks import DeadlineCallback

# The README's SLURM command (without gpus_per_node: this node has no GPU).
README_SLURM = [
    "hydra/launcher=submitit_slurm",
    "hydra.launcher.partition=debug",
    "hydra.launcher.timeout_min=60",
    "hydra.launcher.cpus_per_task=1",
]


# --- neurecon.cluster without a cluster ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0:58", 58), ("59:59", 3599), ("1:00:00", 3600), ("1-00:00:00", 86400),
     ("2-05", 2 * 86400 + 5 * 3600), ("1-2:03:04", 93784), ("UNLIMITED", None),
     ("INVALID", None), ("NOT_SET", None), ("", None)],
)  # fmt: skip
def test_parse_slurm_duration(text, seconds):
    assert parse_slurm_duration(text) == seconds


def test_slurm_job_sets_a_deadline_and_resumes_after_a_requeue():
    now = 1000.0
    job = SlurmJob("7", restart_count=0, cpus_per_task=2, time_left_s=600.0)
    node = job.deadline_node({"max_time": None}, now)
    # The run ends 2 % before the job (the trainer keeps the evaluation's time from that).
    assert node == {"_target_": "neurecon.train.callbacks.DeadlineCallback", "at": now + 588}
    assert job.trainer_overrides({"max_time": None, "resume": "never"}) == {}
    short = SlurmJob("7", time_left_s=50.0).deadline_node({"max_time": None}, now)
    assert short["at"] == now + 40  # at least 10 s for the process to end
    # An explicit max_time wins (the deadline is only the signal's); a requeued job continues
    # from its checkpoint.
    requeued = SlurmJob("7", restart_count=1, time_left_s=600.0)
    assert requeued.deadline_node({"max_time": 100}, now)["at"] == math.inf
    assert requeued.trainer_overrides({"max_time": 100, "resume": "never"}) == {"resume": "auto"}
    assert requeued.trainer_overrides({"max_time": 100, "resume": "x.ckpt"}) == {}
    assert SlurmJob.from_env({}) is None


def test_trainer_stops_at_its_deadline_and_still_evaluates(tmp_path):
    from neurecon.build import build

    at = time.time() + 2.0
    deadline = f"+callbacks.deadline={{_target_:neurecon.train.callbacks.DeadlineCallback,at:{at}}}"
    r = build(compose_cfg([*TINY, "trainer.max_steps=100000", "eval.mesh_resolution=32",
                           deadline]))  # fmt: skip
    m = r.trainer.fit(r.scene, r.field, r.renderer, r.optimizer, tmp_path)
    assert m["status"] == "time_limit" and 0 < m["steps"] < 100000
    assert m["stop_reason"].startswith(
        f"the job's time limit is near: stopped at step {m['steps']} ("
    ), m["stop_reason"]
    assert (tmp_path / "mesh.ply").is_file() and (tmp_path / "metrics.json").is_file()
    # the step that stopped training was checkpointed
    assert (tmp_path / "checkpoints" / f"step_{m['steps']:07d}.ckpt").is_file()


def test_warning_signal_moves_the_deadline_to_now():
    early, late = DeadlineCallback(), DeadlineCallback()
    before = signal.getsignal(signal.SIGUSR2)
    with deadline_on_signal() as attach:
        attach(late)
        os.kill(os.getpid(), signal.SIGUSR2)
        time.sleep(0.05)
        assert late.at <= time.time()
        attach(early)  # a signal caught before the trainer existed still applies
        assert early.at == late.at
    assert signal.getsignal(signal.SIGUSR2) is before


# --- the live cluster -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running cluster: the environment for its clients (``SLURM_CONF``)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e .[slurm]")
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("the test cluster needs root on Linux (tests/slurm/start.sh)")
    state = tmp_path_factory.mktemp("slurm")
    t0 = time.time()
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t0 - 1))
    res = subprocess.run(
        ["bash", str(REPO / "tests/slurm/start.sh"), str(state)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if res.returncode == 3:
        pytest.skip(f"no SLURM cluster here: {res.stderr.strip()}")
    assert res.returncode == 0, res.stderr[-3000:]
    print(f"SLURM cluster up in {time.time() - t0:.1f} s")
    env = {**os.environ, "SLURM_CONF": str(state / "slurm.conf"), "WANDB_SILENT": "true",
           "NEURECON_SLURM_SINCE": since}  # fmt: skip
    env.pop("WANDB_API_KEY", None)
    yield env
    subprocess.run(["bash", str(REPO / "tests/slurm/stop.sh"), str(state)], timeout=60)


@pytest.fixture(scope="module")
def limit_sweep(slurm, tmp_path_factory):
    """A trial with a 2-minute limit and no trainer.max_time, started in the background as
    soon as the cluster is up (it waits on the clock, not the CPU): (process, sweep folder).
    Two minutes, not one: SLURM sends the warning signal up to a minute before it is due, and
    with 1 minute it came ~20 s into the job, when the suite's load had let it take 2 steps."""
    sweep_dir = tmp_path_factory.mktemp("limit") / "sweep"
    proc = _train(
        slurm,
        sweep_dir,
        "sweep=lr_inv_s",
        "hydra.sweeper.n_trials=1",
        "logger=none",
        "hydra.launcher.timeout_min=2",
        "hydra.launcher.signal_delay_s=10",
        "trainer.max_steps=100000",
        background=True,
    )
    yield proc, sweep_dir
    if proc.poll() is None:
        proc.kill()


def _train(env, sweep_dir, *args, background=False):
    cmd = [sys.executable, "train.py", "-m", f"hydra.sweep.dir={sweep_dir}", *FAST]
    cmd += [*README_SLURM, *args]
    kw = {"cwd": REPO, "env": env, "text": True}
    if background:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)
    return subprocess.run(cmd, capture_output=True, timeout=900, **kw)


def _jobs(sweep_dir: Path) -> list[str]:
    """The sweep's SLURM job ids (array tasks: ``ID_INDEX``), from submitit's folders."""
    names = [p.name for p in (sweep_dir / ".submitit").iterdir()]
    ids = [n for n in names if n.replace("_", "").isdigit()]
    tasks = [n for n in ids if "_" in n]  # submitit also keeps a folder per array ("ID")
    return sorted(tasks or ids, key=lambda n: [int(p) for p in n.split("_")])


def _sacct(env, job_ids, *, duplicates=False) -> list[dict[str, str]]:
    """sacct's rows for these jobs (allocations only): JobID, State, Start, End, Elapsed."""
    cols = ["JobID", "State", "Start", "End", "ElapsedRaw", "Timelimit"]
    since = env["NEURECON_SLURM_SINCE"]  # this cluster's jobs only
    cmd = ["sacct", "-X", "-n", "-P", "-S", since, "-o", ",".join(cols), "-j", ",".join(job_ids)]
    out = subprocess.run(cmd + ["-D"] * duplicates, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [dict(zip(cols, line.split("|"), strict=True)) for line in out.stdout.splitlines()]


def _wait_for_accounting(env, job_ids, done=("COMPLETED",), timeout=30.0):
    """sacct's rows once every job reached a final state (slurmdbd lags the jobs a little)."""
    end = time.time() + timeout
    while True:
        rows = _sacct(env, job_ids)
        if len(rows) == len(job_ids) and all(r["State"] in done for r in rows):
            return rows
        if time.time() > end:
            return rows
        time.sleep(1)


def test_lr_inv_s_sweep_runs_each_trial_as_a_slurm_job(slurm, limit_sweep, tmp_path):
    pytest.importorskip("wandb")
    sweep_dir = tmp_path / "slurm_sweep"
    res = _train(
        slurm,
        sweep_dir,
        "sweep=lr_inv_s",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "logger=wandb",
        "logger.mode=offline",
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    study = _study(sweep_dir, "lr_inv_s")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 2
    runs = sorted(sweep_dir.glob("trial_*/metrics.json"))
    assert len(runs) == 2
    assert {json.loads(p.read_text())["status"] for p in runs} == {"completed"}
    jobs = _jobs(sweep_dir)
    rows = _wait_for_accounting(slurm, jobs)
    assert len(jobs) == 2 and [r["State"] for r in rows] == ["COMPLETED"] * 2, rows
    # n_jobs=2: the batch's two jobs ran at the same time.
    a, b = rows
    assert a["Start"] < b["End"] and b["Start"] < a["End"], (a, b)
    # W&B groups the trials by sweep as in a local sweep; evaluate.py reads the sweep folder.
    from test_logging import _wandb_runs

    wb = _wandb_runs(sweep_dir)
    assert len(wb) == 2 and {r["group"] for r in wb} == {"slurm_sweep"}
    table = subprocess.run(
        [sys.executable, "evaluate.py", str(sweep_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert table.returncode == 0, table.stderr[-2000:]
    rows = [line for line in table.stdout.splitlines() if "optimizer.lr=" in line]
    assert len(rows) == 2, table.stdout  # one row per trial, labelled by its swept values


def test_a_requeued_job_resumes_from_its_checkpoint_and_finishes(slurm, tmp_path):
    sweep_dir = tmp_path / "requeue"
    proc = _train(
        slurm,
        sweep_dir,
        "sweep=lr_inv_s",
        "hydra.sweeper.n_trials=1",
        "logger=none",
        "trainer.max_steps=120",
        "callbacks.checkpoint.every=10",
        background=True,
    )
    try:
        end = time.time() + 300
        while not list(sweep_dir.glob("trial_0/checkpoints/step_*.ckpt")):
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.time() < end, "no checkpoint within 300 s"
            time.sleep(0.5)
        (job,) = _jobs(sweep_dir)
        subprocess.run(["scontrol", "requeue", job], env=slurm, check=True)
        # SLURM holds a requeued job for two minutes (BeginTime); an admin's release:
        end, released = time.time() + 60, False
        while time.time() < end:
            state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], env=slurm,
                                   capture_output=True, text=True).stdout.strip()  # fmt: skip
            if state == "PENDING":
                subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"],
                               env=slurm, capture_output=True)  # fmt: skip
                released = True
            elif released or not state:
                break
            time.sleep(0.5)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    m = json.loads((sweep_dir / "trial_0" / "metrics.json").read_text())
    assert m["status"] == "completed" and m["steps"] == 120
    log = (sweep_dir / "trial_0" / "train.log").read_text()
    assert "was requeued (restart 1)" in log and "resumed from" in log
    assert "in use by another run" not in log
    # Two attempts of one job: the first ended (REQUEUED) before the second began.
    first, second = _wait_for_accounting(slurm, [job])[:1], _sacct(slurm, [job], duplicates=True)
    assert [r["State"] for r in second] == ["REQUEUED", "COMPLETED"], second
    assert second[0]["End"] <= second[1]["Start"]
    assert first[0]["State"] == "COMPLETED"
    assert [t.state.name for t in _study(sweep_dir, "lr_inv_s").trials] == ["COMPLETE"]


def test_a_two_minute_job_ends_with_a_mesh_before_its_time_limit(slurm, limit_sweep):
    proc, sweep_dir = limit_sweep
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    m = json.loads((sweep_dir / "trial_0" / "metrics.json").read_text())
    assert m["status"] == "time_limit" and "time limit" in m["stop_reason"]
    assert m["steps"] > 10 and (sweep_dir / "trial_0" / "mesh.ply").stat().st_size > 1000
    (row,) = _wait_for_accounting(slurm, _jobs(sweep_dir))
    assert row["State"] == "COMPLETED" and int(row["ElapsedRaw"]) < 120, row
