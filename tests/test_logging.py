"""Loggers: W&B offline runs read back from their files, TensorBoard, CSV, sweep grouping."""

import csv
import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import COARSE_GRID, REPO, TINY
from wandb_records import read_run

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"
RUN = [o for o in TINY if o != "logger=none"] + [
    "dataset.shape=sphere",
    "trainer.max_steps=20",
    "callbacks.log.every=5",
    *COARSE_GRID,
]


def _train(*args, env=None, cwd=REPO):
    e = {**os.environ, "WANDB_SILENT": "true", **(env or {})}
    e = {k: v for k, v in e.items() if v is not None}  # None: unset
    return subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=e,
    )


def _wandb_runs(folder: Path) -> list[dict]:
    files = sorted(glob.glob(str(folder / "**" / "offline-run-*" / "run-*.wandb"), recursive=True))
    return [read_run(Path(f)) for f in files]


def test_wandb_offline_run_has_history_summary_and_no_key(tmp_path):
    pytest.importorskip("wandb")
    res = _train(
        f"hydra.run.dir={tmp_path}",
        *RUN,
        "logger=wandb",
        "logger.mode=auto",
        "eval.video_frames=3",
        env={"WANDB_API_KEY": None, "WANDB_MODE": None},
    )
    assert res.returncode == 0, res.stderr[-2000:]
    (run,) = _wandb_runs(tmp_path)
    # The coloured mesh as an Object3D point cloud (x, y, z, r, g, b), the turntable as a video.
    media = {k: v for row in run["history"] for k, v in row.items() if k.startswith("turntable/")}
    media.update({k: v for row in run["history"] for k, v in row.items() if k.startswith("mesh/_")})
    media.update({k: v for row in run["history"] for k, v in row.items() if k == "mesh/path"})
    assert media["mesh/_type"] == "object3D-file" and media["turntable/_type"] == "video-file"
    (pts,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "files" / media["mesh/path"]))
    cloud = np.asarray(json.loads(Path(pts).read_text()))
    assert cloud.shape[1] == 6 and cloud[:, 3:].std() > 0  # colours, not one grey
    assert (tmp_path / "turntable.mp4").is_file()
    keys = set().union(*run["history"])
    for k in (
        "loss",
        "loss/color",
        "loss/eikonal",
        "inv_s",
        "lr/network",
        "samples_per_s",
        "guard/skipped_steps",
        "test/psnr",
        "test/ssim",
        "chamfer/mean",
    ):
        assert k in keys, k
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert run["summary"]["test/psnr"] == pytest.approx(m["test/psnr"])
    assert run["summary"]["chamfer/mean"] == pytest.approx(m["chamfer/mean"])
    assert run["config"]["optimizer.lr"] == 1e-3  # top-level copy for parallel coordinates
    assert run["config"]["optimizer"]["lr"] == 1e-3


def test_wandb_api_key_never_lands_in_files(tmp_path):
    pytest.importorskip("wandb")
    res = _train(
        f"hydra.run.dir={tmp_path}",
        *RUN,
        "logger=wandb",
        "logger.mode=offline",
        env={"WANDB_API_KEY": FAKE_KEY},
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert FAKE_KEY not in res.stdout + res.stderr
    for p in tmp_path.rglob("*"):
        if p.is_file():
            assert FAKE_KEY.encode() not in p.read_bytes(), p


def test_csv_and_tensorboard_loggers(tmp_path):
    res = _train(f"hydra.run.dir={tmp_path / 'csv'}", *RUN, "logger=csv")
    assert res.returncode == 0, res.stderr[-2000:]
    with open(tmp_path / "csv" / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {"loss", "inv_s", "test/psnr"} <= {r["key"] for r in rows}
    assert [float(r["value"]) for r in rows if r["key"] == "loss"]

    pytest.importorskip("tensorboard")
    res = _train(f"hydra.run.dir={tmp_path / 'tb'}", *RUN, "logger=tensorboard")
    assert res.returncode == 0, res.stderr[-2000:]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb" / "tb"))
    acc.Reload()
    assert {"loss", "inv_s", "test/psnr"} <= set(acc.Tags()["scalars"])


def test_train_psnr_follows_the_test_rule_on_masked_scenes():
    """A render that is perfect on the object, over a background colour the photos do not
    share (white in some views of a release, dark in others): the bar's train/psnr is the
    object's, as test/psnr_masked, not the 6 dB of the whole photo; train/psnr_photo keeps
    that figure under its own name."""
    import torch

    from neurecon.metrics import psnr
    from neurecon.train.callbacks import train_psnr

    g = torch.Generator().manual_seed(0)
    obj = torch.rand(256, 3, generator=g)
    mask = (torch.rand(256, generator=g) > 0.5).float()
    photo = torch.where(mask[:, None] > 0, obj, torch.ones(256, 3))  # white photo background
    noise = 0.01 * torch.randn(256, 3, generator=g)
    render = torch.where(mask[:, None] > 0, obj + noise, torch.zeros(256, 3))  # black render bg
    out = train_psnr(render, photo, mask)
    fg = mask.numpy() > 0.5
    want = psnr((obj + noise).numpy()[fg], obj.numpy()[fg])
    assert out["train/psnr"] == pytest.approx(want) and out["train/psnr"] > 35
    assert out["train/psnr_photo"] < 8  # what the bar showed before
    assert set(train_psnr(render, photo, None)) == {"train/psnr"}  # unmasked: the photo
