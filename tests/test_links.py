"""Links planted in a run folder: lock files and output folders never redirect our writes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import TINY, trained_run_folder

import evaluate
from neurecon import export
from neurecon.atomic import OutsideRunFolderError, atomic_write, writes_inside
from neurecon.errors import NeuReconError
from neurecon.train.lock import acquire, release

PRECIOUS = "a user's own file\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run")
    trained_run_folder(root, [*TINY, "dataset.shape=sphere", "trainer.max_steps=2"])
    return root


def _copy(run_dir: Path, dst: Path) -> Path:
    shutil.copytree(run_dir, dst)
    (dst / ".lock").unlink(missing_ok=True)
    return dst


def _one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "foreign", "fifo", "folder"])
def test_a_planted_lock_file_is_refused_and_never_truncated(run_dir, tmp_path, capsys, kind):
    run = _copy(run_dir, tmp_path / "run")
    victim = tmp_path / "victim.txt"
    victim.write_text(PRECIOUS)
    lock = run / ".lock"
    if kind == "symlink":
        lock.symlink_to(victim)
    elif kind == "hardlink":
        os.link(victim, lock)
    elif kind == "foreign":
        lock.write_text(PRECIOUS)
    elif kind == "fifo":
        os.mkfifo(lock)
    else:
        lock.mkdir()
    metrics = (run / "metrics.json").read_text()
    capsys.readouterr()
    assert evaluate.main([str(run), "--recompute"]) == 2
    line = _one_error_line(capsys)
    assert ".lock" in line and "refusing" in line, line
    assert victim.read_text() == PRECIOUS
    if kind == "foreign":
        assert lock.read_text() == PRECIOUS
    assert (run / "metrics.json").read_text() == metrics  # earlier outputs untouched


def test_a_real_lock_file_is_still_taken_and_emptied(tmp_path):
    acquire(tmp_path)
    rec = json.loads((tmp_path / ".lock").read_text())
    assert rec["pid"] == os.getpid()
    release(tmp_path)
    assert (tmp_path / ".lock").read_text() == ""
    acquire(tmp_path)  # an empty record (a clean exit) is a lock file too
    release(tmp_path)


@pytest.mark.parametrize("folder", ["test", "val"])
def test_a_symlinked_output_folder_is_refused(run_dir, tmp_path, capsys, folder):
    run = _copy(run_dir, tmp_path / "run")
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(run / folder, ignore_errors=True)
    (run / folder).symlink_to(outside, target_is_directory=True)
    metrics = (run / "metrics.json").read_text()
    if folder == "test":  # evaluate.py --recompute writes the test views there
        capsys.readouterr()
        assert evaluate.main([str(run), "--recompute"]) == 2
        line = _one_error_line(capsys)
        assert "outside the run folder" in line and str(run / "test") in line, line
    else:  # validation renders, as the trainer writes them
        with writes_inside(run), pytest.raises(OutsideRunFolderError, match="outside the run"):
            atomic_write(run / "val" / "step_1.png", lambda p: p.write_bytes(b"x"))
    assert not any(outside.iterdir())
    assert (run / "metrics.json").read_text() == metrics


def test_a_symlinked_export_folder_is_refused(run_dir, tmp_path, capsys):
    run = _copy(run_dir, tmp_path / "run")
    outside = tmp_path / "outside"
    outside.mkdir()
    (run / "export").symlink_to(outside, target_is_directory=True)
    capsys.readouterr()
    assert export.main([str(run), "--resolution", "16", "--no-progress"]) == 2
    assert "outside the run folder" in _one_error_line(capsys)
    assert not any(outside.iterdir())


def test_a_dangling_link_does_not_create_folders_outside(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "test").symlink_to(tmp_path / "elsewhere" / "deep")
    with writes_inside(run), pytest.raises(NeuReconError):
        atomic_write(run / "test" / "view_0.png", lambda p: p.write_bytes(b"x"))
    assert not (tmp_path / "elsewhere").exists()


def test_writes_outside_any_run_folder_are_not_affected(tmp_path):
    """A kernel cache or a user-chosen --out elsewhere is not the run folder's business."""
    (tmp_path / "run").mkdir()
    with writes_inside(tmp_path / "run"):
        atomic_write(tmp_path / "cache" / "k.so", lambda p: p.write_bytes(b"x"))
    assert (tmp_path / "cache" / "k.so").read_bytes() == b"x"
