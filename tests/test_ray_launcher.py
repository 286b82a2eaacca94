"""One GPU per parallel trial: hydra-ray-launcher runs each trial as a Ray task.

No GPU is needed: ``ray.init(num_gpus=2)`` declares two logical GPUs, and Ray hands each task
that asks for one its own ``CUDA_VISIBLE_DEVICES``, as it would on a real multi-GPU machine.
"""

import json

import pytest
from test_sweeps import _study, _sweep

pytest.importorskip("hydra_plugins.hydra_ray_launcher")
pytest.importorskip("ray")

RAY_4_TRIALS_2_AT_ONCE = [
    "hydra/launcher=ray",
    "+hydra.launcher.ray.init.num_cpus=2",
    "+hydra.launcher.ray.init.num_gpus=2",  # logical: no hardware needed
    "+hydra.launcher.ray.init.include_dashboard=false",
    "+hydra.launcher.ray.remote.num_gpus=1",  # each trial takes one GPU
    "hydra.sweeper.n_trials=4",
    "hydra.sweeper.n_jobs=2",
]


def test_ray_launcher_gives_each_parallel_trial_its_own_gpu(tmp_path):
    sweep_dir = tmp_path / "ray"
    res = _sweep(
        sweep_dir,
        "sweep=lr_inv_s",
        *RAY_4_TRIALS_2_AT_ONCE,
        "logger=none",
        "eval.mesh_resolution=0",
        # Ray keeps its token under ~ and would report usage: neither leaves the test.
        env={"HOME": str(tmp_path), "RAY_USAGE_STATS_ENABLED": "0"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    trials = _study(sweep_dir, "lr_inv_s").trials  # every trial reached the study
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    seen = {}
    for t in trials:
        folder = sweep_dir / f"trial_{t.number}"
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["test/psnr"] == pytest.approx(t.value)  # its own folder, its own run
        assert (folder / ".lock").is_file() and (folder / ".hydra" / "config.yaml").is_file()
        seen[t.number] = metrics["cuda_visible_devices"]
    print("CUDA_VISIBLE_DEVICES per trial:", seen)
    # Trials 0, 1 ran together, then 2, 3: each of a pair on its own (logical) GPU.
    assert {seen[0], seen[1]} == {"0", "1"} and {seen[2], seen[3]} == {"0", "1"}
