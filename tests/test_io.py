"""Result files survive a power cut: temporary file, fsync, rename, fsync of the folder."""

from __future__ import annotations

import os
import stat

import pytest

from neurecon import atomic as nio


def test_atomic_write_fsyncs_the_file_then_renames_then_fsyncs_the_folder(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
        events.append((f"fsync {kind}", str(st.st_ino)))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(nio.os, "fsync", fsync)
    monkeypatch.setattr(nio.os, "replace", replace)
    out = tmp_path / "sub" / "metrics.json"
    nio.write_json(out, {"a": 1})
    kinds = [e[0] for e in events]
    assert kinds == ["fsync file", "rename", "fsync dir"], events
    assert events[2][1] == str(os.stat(out.parent).st_ino)  # the folder that holds the name
    assert out.read_text().strip().startswith("{")


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    out = tmp_path / "metrics.json"
    nio.write_json(out, {"old": True})

    def broken(p):
        p.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        nio.atomic_write(out, broken)
    assert out.read_text() == nio.json.dumps({"old": True}, indent=2, sort_keys=True) + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_fsync_tree_syncs_every_file_and_folder(tmp_path, monkeypatch):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("x", "a/y", "a/b/z"):
        (tmp_path / name).write_text(name)
    seen: list[int] = []
    real = os.fsync
    monkeypatch.setattr(nio.os, "fsync", lambda fd: (seen.append(os.fstat(fd).st_ino), real(fd)))
    nio.fsync_tree(tmp_path)
    want = {os.stat(p).st_ino for p in [tmp_path, *tmp_path.rglob("*")]}
    assert set(seen) == want
