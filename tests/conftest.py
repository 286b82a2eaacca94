"""Shared fixtures: config composition and the real data folder."""

from __future__ import annotations

import os
from pathlib import Path

import torch

# Triton kernels (encoder.backend=triton) run on CPU tensors under Triton's interpreter, which
# Triton reads when a kernel is defined: set it before any test module imports neurecon.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Under pytest-xdist (two workers on two cores) each worker takes one thread, and so do the
# runs its tests start (OpenMP reads OMP_NUM_THREADS): two workers each starting two-thread
# runs oversubscribe the cores, and OpenMP's spinning threads then make a pruned sweep 2.5x
# slower than on one thread each (93 s against 37 s for two at once; docs/test-suite.md).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SHARED_DATA = REPO.parent / "shared" / "data"

# Small enough to train in seconds on 2 CPU cores.
TINY = [
    "dataset.resolution=32",
    "dataset.num_views=16",
    "dataset.num_gt_points=20000",
    "trainer.batch_rays=256",
    "trainer.samples_per_step=8192",
    "callbacks.validate.every=0",
    "callbacks.checkpoint.every=0",
    "eval.mesh_resolution=48",
    # mesh.png's panels at 128 px, not 512: 16x fewer splats (~1.3 s less in every tiny run)
    "eval.picture_size=128",
    "eval.metrics.chamfer.points=20000",
    "trainer.progress=false",
    "trainer.device=cpu",
    "logger=none",
    # LPIPS loads JAX and its weights in every process (~1.5 s): tested in test_lpips.py and
    # at the end of one CLI run (test_train.py), not in every tiny run.
    "eval.metrics.lpips.net=null",
]

# For tests of bookkeeping, not accuracy (sweeps, loggers, locks, tables, the installed package,
# resume after a kill): a 32^3 occupancy grid (a refresh 8x cheaper than 64^3's) and 128
# marching steps (validation and test views take 4x fewer samples before the grid prunes):
# a 20-step run with 4 validations 8.3 -> 3.7 s.
COARSE_GRID = ["renderer.grid.resolution=32", "renderer.grid.n_steps=128"]

# The files that take longest (minutes on 2 cores) are handed out first: the two xdist workers
# take a file each, and a long file started last would leave one worker finishing it alone.
LONG_FILES = ("test_sweeper_compat.py", "test_sweeps.py", "test_robustness.py", "test_train.py",
              "test_slurm.py", "test_loader_fuzz.py", "test_ray_launcher.py", "test_package.py",
              "test_sweeps_distributed.py", "test_prepare.py", "test_logging.py")  # fmt: skip


def pytest_collection_modifyitems(config, items) -> None:
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable within a file


def compose_cfg(overrides: list[str] | None = None) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides or [])


@pytest.fixture
def dtu_scan65() -> Path:
    path = SHARED_DATA / "dtu_scan65"
    if not (path / "cameras_sphere.npz").is_file():
        pytest.skip(f"real DTU data not found at {path}")
    return path


def fit_on_files(out: Path, *overrides: str) -> dict:
    """Train a file-based dataset (``dataset=... dataset.root=...`` in ``overrides``) with the
    TINY trainer settings; returns the run's metrics."""
    from neurecon.build import build

    keep = [o for o in TINY if not o.startswith("dataset.")]
    r = build(compose_cfg([*keep, *overrides]))
    return r.trainer.fit(r.scene, r.field, r.renderer, r.optimizer, out)


def trained_run_folder(root: Path, overrides: list[str]):
    """Train ``compose_cfg(overrides)`` into ``root`` and save the config where Hydra puts it
    (``root/.hydra/config.yaml``): a run folder as ``train.py`` leaves it. Returns the run."""
    from omegaconf import OmegaConf

    from neurecon.build import build

    cfg = compose_cfg(overrides)
    r = build(cfg)
    r.trainer.fit(r.scene, r.field, r.renderer, r.optimizer, root)
    (root / ".hydra").mkdir()
    OmegaConf.save(cfg, root / ".hydra" / "config.yaml")
    return r
