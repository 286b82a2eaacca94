"""The GPU acceptance command, tried on a CPU with tiny settings (the way it is prepared before
a device run): it trains the hash-grid preset on a NeuS-format scan under a time budget and
writes its figures and a picture of the mesh."""

import json
import subprocess
import sys

from conftest import REPO
from test_data import write_neus_scene


def test_gpu_suite_runs_end_to_end_on_a_cpu(tmp_path):
    write_neus_scene(tmp_path / "scan", n=8)
    out = tmp_path / "bench"
    res = subprocess.run(
        [sys.executable, "-m", "neurecon.bench", "--suite", "gpu", "--data", str(tmp_path / "scan"),
         "--allow-cpu", "--skip-cuda-tests", "--budget", "3", "--check-every", "5",
         "--out", str(out), "dataset.test_every=4", "renderer.grid.resolution=16",
         "renderer.grid.n_steps=64", "encoder.log2_table_size=12", "encoder.max_resolution=128",
         "eval.mesh_resolution=32"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    fig = json.loads((out / "gpu_suite.json").read_text())
    assert fig["status"] == "time_limit" and fig["steps"] > 0
    assert fig["device"] == "cpu" and fig["projected_20k_steps_s"] > 0
    for key in ("wall_s", "steps_per_s", "test_psnr", "test_psnr_masked", "time_to_25db_masked_s"):
        assert key in fig
    assert (out / "mesh.png").is_file() and fig["mesh_picture"].endswith("mesh.png")
    assert "projected 20k steps" in res.stdout and "final test PSNR" in res.stdout


def test_gpu_suite_refuses_a_cpu_without_allow_cpu(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "neurecon.bench", "--suite", "gpu", "--data", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 2 and "needs a CUDA GPU" in res.stderr
