"""Sweeps across workers: two processes sharing one study on a real PostgreSQL server, and
parallel trials on one machine with the joblib launcher."""

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
from test_sweeps import _study, _sweep

optuna = pytest.importorskip("optuna")
PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), default=None)  # Debian's layout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres():
    """A throw-away PostgreSQL server on loopback; initdb refuses root, so run it as nobody."""
    pytest.importorskip("psycopg2")
    if PG_BIN is None or not (PG_BIN / "initdb").exists():
        pytest.skip("PostgreSQL server binaries not installed")
    root = Path(tempfile.mkdtemp(prefix="neurecon-pg-"))
    os.chmod(root, 0o777)
    as_user = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(root, "nobody")
    port = _free_port()
    data, log = root / "data", root / "server.log"
    subprocess.run(
        [
            *as_user,
            str(PG_BIN / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *as_user,
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(log),
            "-w",
            "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            [
                str(PG_BIN / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
                "optuna",
            ],
            check=True,
            capture_output=True,
        )
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run(
            [*as_user, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_one_study_on_postgresql(tmp_path, postgres):
    args = [
        "sweep=lr_inv_s",
        "hydra.sweeper.n_trials=2",
        "logger=none",
        f"hydra.sweeper.storage='{postgres}'",
        "hydra.sweeper.study_name=shared",
    ]
    # Two workers, as on two machines: separate folders, one study in the database.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(_sweep, tmp_path / f"worker{i}", *args) for i in range(2)]
        results = [f.result() for f in futures]
    for res in results:
        assert res.returncode == 0, res.stderr[-3000:]
    study = optuna.load_study(study_name="shared", storage=postgres)
    assert len(study.trials) == 4
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    # Both workers contributed: each one's folder holds two finished trials.
    for i in range(2):
        assert len(list((tmp_path / f"worker{i}").glob("trial_*/metrics.json"))) == 2
    starts = sorted(t.datetime_start for t in study.trials)
    ends = sorted(t.datetime_complete for t in study.trials)
    assert starts[1] < ends[0]  # the workers really ran at the same time


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
