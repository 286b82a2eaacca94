"""The ``cuda`` suite: what only a GPU can check. ``python -m pytest -m cuda`` runs it; without
CUDA every test is skipped with its reason, so CPU CI stays green and never needs a GPU.
``python -m neurecon.bench --suite gpu`` runs it on a lent GPU machine and reports each outcome.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch
from conftest import REPO, TINY, compose_cfg
from test_occupancy import CENTRE, OffCentreSphereSDF, _camera_rays

from neurecon.build import build
from neurecon.fields.base import SDFOutput
from neurecon.render import NeuSRenderer, OccupancyGrid, occupancy
from neurecon.train.callbacks import SyncCountCallback

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
CUDA_TINY = [o for o in TINY if o != "trainer.device=cpu"] + ["trainer.device=cuda"]
needs_nerfacc = pytest.mark.skipif(
    importlib.util.find_spec("nerfacc") is None, reason="nerfacc is not installed"
)


class _CudaSphere(OffCentreSphereSDF):
    """test_occupancy's converged analytic NeuS field, on the GPU."""

    def sdf(self, x):
        return (x - CENTRE.to(x.device)).norm(dim=-1) - 0.45

    def inv_s(self):
        return torch.tensor(1500.0, device="cuda")

    def forward(self, x, d, create_graph=True):
        g = torch.nn.functional.normalize(x - CENTRE.to(x.device), dim=-1)
        return SDFOutput(self.sdf(x), g, 0.5 + 0.4 * torch.sin(4 * x))


def _fit(tmp_path, *overrides):
    run = build(compose_cfg([*CUDA_TINY, "dataset.shape=sphere", *overrides]))
    return run, run.trainer.fit(run.scene, run.field, run.renderer, run.optimizer, tmp_path)


@needs_nerfacc
def test_nerfacc_march_matches_the_torch_march_on_a_converged_field():
    """nerfacc's traversal against ours on the analytic off-centre sphere, within the CPU grid
    test's tolerances (colour and opacity < 0.02, depth < 3e-3)."""
    dev = torch.device("cuda")
    assert occupancy.probe_nerfacc(dev) is None, "nerfacc does not run here"
    field, bg = _CudaSphere(), torch.tensor([0.1, 0.2, 0.3], device=dev)
    o, d = (t.to(dev) for t in _camera_rays())
    out = {}
    for backend in ("torch", "nerfacc"):
        renderer = NeuSRenderer(grid=OccupancyGrid(64, n_steps=1024, backend=backend)).to(dev)
        renderer.setup(dev)
        assert renderer.grid.resolve_backend(dev) == backend
        renderer.ensure_grid(field)
        out[backend] = renderer.eval()(field, o, d, bg)
        assert renderer.grid.marches[backend] > 0  # that backend really marched
        assert renderer.grid.marches["nerfacc" if backend == "torch" else "torch"] == 0
    a, b = out["torch"], out["nerfacc"]
    hit = a.opacity > 0.5
    assert (a.color - b.color).abs().max() < 0.02
    assert (a.opacity - b.opacity).abs().max() < 0.02
    assert (a.depth[hit] - b.depth[hit]).abs().max() < 3e-3


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_runs_match_fp32(tmp_path, precision):
    common = ["trainer.max_steps=300", "optimizer.lr=5e-3", "loss.mask.weight=0.5"]
    _, ref = _fit(tmp_path / "fp32", *common)
    _, m = _fit(tmp_path / precision, *common, f"trainer.precision={precision}")
    assert m["status"] == "completed" and np.isfinite(m["test/psnr"])
    assert np.isfinite(m["chamfer/mean"])
    assert abs(m["test/psnr"] - ref["test/psnr"]) < 0.5, (m["test/psnr"], ref["test/psnr"])


def _cli(out, *overrides):
    args = [a for a in CUDA_TINY if not a.startswith("callbacks.checkpoint.every")]
    return [sys.executable, "train.py", f"hydra.run.dir={out}", *args, "dataset.shape=sphere",
            *overrides]  # fmt: skip


@needs_nerfacc
def test_sigkill_then_resume_on_cuda_with_the_nerfacc_grid(tmp_path):
    args = [
        "trainer.max_steps=300",
        "callbacks.checkpoint.every=25",
        "renderer.grid.backend=nerfacc",
    ]
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli(out, *args), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while not list((out / "checkpoints").glob("step_0000050.ckpt")) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = subprocess.run(
        _cli(out, *args, "trainer.resume=auto"), cwd=REPO, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "completed" and m["steps"] == 300 and np.isfinite(m["test/psnr"])
    assert m["backend/march"] == "nerfacc"  # nerfacc really ran (its probe once always failed)


def test_a_cuda_run_folder_is_re_evaluated_on_cpu(tmp_path):
    run_dir = tmp_path / "cuda_run"
    res = subprocess.run(
        [
            *_cli(run_dir, "trainer.max_steps=60", "callbacks.checkpoint.every=60"),
            "trainer.device=cuda",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    before = json.loads((run_dir / "metrics.json").read_text())
    (run_dir / "metrics.json").unlink()
    # The saved config says trainer.device=cuda; the recompute happens where CUDA is hidden.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(
        [sys.executable, "evaluate.py", str(run_dir), "--recompute"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    after = json.loads((run_dir / "metrics.json").read_text())
    assert after["test/psnr"] == pytest.approx(before["test/psnr"], abs=0.05)


def test_bench_reports_cuda_peak_memory(tmp_path):
    out = tmp_path / "bench.json"
    res = subprocess.run(
        [sys.executable, "-m", "neurecon.bench", "--json", str(out), "--budget", "5",
         "--val-size", "400x300", "trainer.device=cuda", "trainer.max_steps=200"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    fig = json.loads(out.read_text())
    assert fig["memory_kind"] == "cuda" and fig["train_peak_mib"] > 0 and fig["val_peak_mib"] > 0


class _SyncWarnings:
    """CUDA's own record of synchronising calls (``torch.cuda.set_sync_debug_mode``), as a
    ``SyncCountCallback`` counter: the same window as the CPU count."""

    def __enter__(self):
        self._cm = warnings.catch_warnings(record=True)
        self._rec = self._cm.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode(1)  # warn at every synchronising call
        return self

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode(0)
        self.calls = [str(w.message)[:120] for w in self._rec]
        self._cm.__exit__(*exc)


def test_a_cuda_step_syncs_twice_and_its_pixels_stay_on_the_device(tmp_path):
    """dataset.device=auto puts a small scene's pixels on the GPU; an ordinary step then syncs
    for the guard's flags and the march's sample count only (CPU: test_step_syncs.py)."""
    cb = SyncCountCallback({41, 42}, counter=_SyncWarnings)
    run = build(compose_cfg([*CUDA_TINY, "dataset.shape=sphere", "trainer.max_steps=50",
                             "renderer.grid.warmup_steps=16"]))  # fmt: skip
    m = run.trainer.fit(run.scene, run.field, run.renderer, run.optimizer, tmp_path, callbacks=[cb])
    assert run.trainer.store.pixels.is_cuda and m["status"] == "completed"
    print("CUDA syncs per step:", {k: len(v) for k, v in cb.per_step.items()}, cb.per_step)
    assert all(len(v) <= 2 for v in cb.per_step.values()), cb.per_step


def test_a_host_store_trains_like_a_device_store(tmp_path):
    """dataset.device=host: pinned batches, copied without blocking; the same figures."""
    common = ["trainer.max_steps=200", "optimizer.lr=5e-3"]
    runs = {p: _fit(tmp_path / p, *common, f"dataset.device={p}") for p in ("device", "host")}
    assert not runs["host"][0].trainer.store.pixels.is_cuda
    assert runs["device"][0].trainer.store.pixels.is_cuda
    psnr = {p: m["test/psnr"] for p, (_, m) in runs.items()}
    assert abs(psnr["host"] - psnr["device"]) < 1.0, psnr
