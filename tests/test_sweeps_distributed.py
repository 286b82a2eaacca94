"""Sweeps across workers: two processes sharing one study on a real PostgreSQL server, and
parallel trials on one machine with the joblib launcher."""

import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from test_sweeps import _study, _sweep

from neurecon.storage import open_storage

optuna = pytest.importorskip("optuna")
PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), default=None)  # Debian's layout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Postgres:
    url: str  # without the password (what may appear anywhere)
    password: str

    @property
    def full_url(self) -> str:  # what a user exports in NEURECON_STORAGE
        return self.url.replace("sweeper@", f"sweeper:{self.password}@")


def _pg(*args, **kwargs):
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, **kwargs)


@pytest.fixture
def postgres():
    """A throw-away PostgreSQL server on loopback with a password-protected role ``sweeper``
    (TCP connections need the password). initdb refuses root, so the server runs as nobody."""
    pytest.importorskip("psycopg2")
    if PG_BIN is None or not (PG_BIN / "initdb").exists():
        pytest.skip("PostgreSQL server binaries not installed")
    root = Path(tempfile.mkdtemp(prefix="neurecon-pg-"))
    os.chmod(root, 0o777)
    as_user = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(root, "nobody")
    port, password = _free_port(), "pw-" + secrets.token_hex(12)
    data, log = root / "data", root / "server.log"
    _pg(*as_user, PG_BIN / "initdb", "-D", data, "-U", "postgres", "-E", "UTF8",
        "--auth-local=trust", "--auth-host=scram-sha-256")  # fmt: skip
    _pg(*as_user, PG_BIN / "pg_ctl", "-D", data, "-l", log, "-w", "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start")  # fmt: skip
    try:
        admin = ["-h", root, "-p", port, "-U", "postgres"]  # the Unix socket: trusted
        _pg(PG_BIN / "psql", *admin, "-c", f"CREATE ROLE sweeper LOGIN PASSWORD '{password}'")
        _pg(PG_BIN / "createdb", *admin, "-O", "sweeper", "optuna")
        yield Postgres(f"postgresql+psycopg2://sweeper@127.0.0.1:{port}/optuna", password)
    finally:
        subprocess.run(
            [*as_user, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_one_study_on_postgresql(tmp_path, postgres):
    args = [
        "sweep=lr_inv_s",
        "hydra.sweeper.n_trials=1",
        "logger=none",
        f"hydra.sweeper.storage='{postgres.url}'",  # no password: libpq reads PGPASSWORD
        "hydra.sweeper.study_name=shared",
    ]
    # Two workers, as on two machines: separate folders, one study in the database.
    with ThreadPoolExecutor(2) as pool:
        futures = [
            pool.submit(
                _sweep, tmp_path / f"worker{i}", *args, env={"PGPASSWORD": postgres.password}
            )
            for i in range(2)
        ]
        results = [f.result() for f in futures]
    for res in results:
        assert res.returncode == 0, res.stderr[-3000:]
    study = optuna.load_study(study_name="shared", storage=postgres.full_url)
    assert len(study.trials) == 2
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    # Both workers contributed: each one's folder holds its finished trial.
    for i in range(2):
        assert len(list((tmp_path / f"worker{i}").glob("trial_*/metrics.json"))) == 1
    starts = sorted(t.datetime_start for t in study.trials)
    ends = sorted(t.datetime_complete for t in study.trials)
    assert starts[1] < ends[0]  # the workers really ran at the same time
    # Same command, same seed, at the same time: still no parameter set drawn twice.
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 2


def _files_containing(root: Path, secret: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_storage_password_reaches_no_file_and_no_output(tmp_path, postgres):
    """Pruning on (trials report through the storage), W&B offline: the password is in the
    environment only, and in no file under the sweep folder, nor in stdout / stderr."""
    pytest.importorskip("wandb")
    sweep_dir = tmp_path / "secret"
    res = _sweep(
        sweep_dir,
        "sweep=lr_inv_s",
        "hydra.sweeper.n_trials=2",
        "hydra/sweeper/pruner=median",
        "hydra.sweeper.storage='${oc.env:NEURECON_STORAGE}'",
        "hydra.sweeper.study_name=secret",
        "callbacks.validate.every=5",
        "trainer.max_steps=10",
        "eval.mesh_resolution=0",
        "logger=wandb",
        "logger.mode=offline",
        env={"NEURECON_STORAGE": postgres.full_url},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    study = optuna.load_study(study_name="secret", storage=postgres.full_url)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 2
    assert all(t.intermediate_values for t in study.trials)  # reported through the storage
    assert list(sweep_dir.glob("trial_*/wandb/offline-run-*"))  # W&B files exist and are read
    assert _files_containing(sweep_dir, postgres.password) == []
    assert postgres.password not in res.stdout + res.stderr
    n = sum(1 for p in sweep_dir.rglob("*") if p.is_file())
    print(f"password found in 0 of {n} files under the sweep folder, nor in stdout/stderr")


def test_storage_password_on_the_command_line_is_refused_redacted(tmp_path, postgres):
    sweep_dir = tmp_path / "typed"
    res = _sweep(
        sweep_dir,
        "sweep=lr_inv_s",
        f"hydra.sweeper.storage='{postgres.full_url}'",
        "hydra.sweeper.study_name=typed",
        "logger=none",
    )
    assert res.returncode != 0
    assert "sweeper:***@127.0.0.1" in res.stderr and "PGPASSWORD" in res.stderr
    assert postgres.password not in res.stdout + res.stderr
    assert not sweep_dir.exists() or _files_containing(sweep_dir, postgres.password) == []


def test_parallel_workers_lose_and_repeat_nothing(tmp_path):
    """2 sweeper processes with the same command, one journal and one sweep folder (two shells,
    or workers on a cluster's shared filesystem): every trial is recorded once, with its own
    parameters, in its own ``trial_N`` folder named by its Optuna number, config intact.
    (Hydra's job numbers count per process: both workers once wrote ``trial_0``.)
    A sweep resumed from its journal: test_sweeps.py."""
    sweep_dir = tmp_path / "shared"
    journal = sweep_dir / "optuna.journal"
    args = [
        "sweep=lr_inv_s",
        "hydra.sweeper.n_trials=2",
        "logger=none",
        "hydra.sweeper.study_name=par",
        "trainer.max_steps=5",  # the point is the study, not the training
        "eval.mesh_resolution=0",
        "trainer.objective=test/psnr",
    ]
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(_sweep, sweep_dir, *args) for _ in range(2)]
        results = [f.result() for f in futures]
    for res in results:
        assert res.returncode == 0, res.stderr[-3000:]
    trials = optuna.load_study(study_name="par", storage=open_storage(str(journal))).trials
    print("states:", Counter(t.state.name for t in trials))
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4
    folders = sorted(p.name for p in sweep_dir.glob("trial_*"))
    assert folders == [f"trial_{i}" for i in range(4)], folders
    for t in trials:  # each folder's saved config is its own trial's, and it finished
        run = sweep_dir / f"trial_{t.number}"
        cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
        assert cfg.optimizer.lr == pytest.approx(t.params["optimizer.lr"])
        assert json.loads((run / "metrics.json").read_text())["status"] == "completed"


@pytest.mark.slow  # parallel trials through a launcher plugin: tests/test_ray_launcher.py
def test_joblib_launcher_runs_trials_in_parallel(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    res = _sweep(
        tmp_path / "j",
        "sweep=lr_inv_s",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=2",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "logger=none",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    trials = _study(tmp_path / "j", "lr_inv_s").trials
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    assert len(list((tmp_path / "j").glob("trial_*/metrics.json"))) == 4
