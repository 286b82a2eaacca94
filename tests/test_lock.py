"""One writer per run folder: a live run's folder refuses a second writer; a killed run's
stale lock is taken over."""

import json
import signal
import subprocess
import sys
import time

from conftest import COARSE_GRID, REPO, TINY

from neurecon.train.lock import acquire, release

ARGS = [*TINY, *COARSE_GRID, "dataset.shape=sphere", "callbacks.checkpoint.every=10",
        "eval.mesh_resolution=0"]  # fmt: skip


def _cli(out, *overrides):
    return [sys.executable, "train.py", f"hydra.run.dir={out}", *ARGS, *overrides]


def _run(out, *overrides):
    return subprocess.run(_cli(out, *overrides), cwd=REPO, capture_output=True, text=True)


def test_second_writer_is_refused_and_a_stale_lock_is_taken_over(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(  # far more steps than the test lasts: it is killed below
        _cli(out, "trainer.max_steps=100000"),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 180
        while not list((out / "checkpoints").glob("step_*.ckpt")) and time.time() < deadline:
            time.sleep(0.2)
        assert first.poll() is None, "the first run ended too early for this test"
        saved_cfg = (out / ".hydra" / "config.yaml").read_text()
        for extra in (["trainer.resume=auto"], ["trainer.overwrite=true"]):
            res = _run(out, "trainer.max_steps=100000", *extra)
            assert res.returncode == 2, res.stderr[-2000:]
            lines = res.stderr.strip().splitlines()
            assert len(lines) == 1 and f"in use by another run (pid {first.pid} on " in lines[0]
        # The refused runs wrote nothing: the live run's saved config is its own.
        assert (out / ".hydra" / "config.yaml").read_text() == saved_cfg
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert json.loads((out / ".lock").read_text())["pid"] == first.pid  # left behind
    done = max(int(p.stem.split("_")[1]) for p in (out / "checkpoints").glob("step_*.ckpt"))
    res = _run(out, f"trainer.max_steps={done + 5}", "trainer.resume=auto")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "taking over a stale lock left by pid" in res.stdout + res.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "completed" and m["steps"] == done + 5
    assert (out / ".lock").read_text() == ""  # a clean exit empties the record


def test_lock_is_reentrant_within_a_process_and_released(tmp_path):
    acquire(tmp_path)
    acquire(tmp_path)  # train.py's callback, then Trainer.fit
    release(tmp_path)
    # Still held: another process is refused.
    code = (
        "import sys; from neurecon.train.lock import acquire, RunFolderLocked\n"
        f"try: acquire({str(tmp_path)!r})\n"
        "except RunFolderLocked as e: print(e); sys.exit(3)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 3 and "in use by another run" in res.stdout
    release(tmp_path)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
