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


def test_the_bench_times_a_run_s_test_views_carved_and_not(tmp_path):
    """``--run DIR``: the end-of-run test-view render time per megapixel of a saved run; with
    ``--carve`` its (uncarved) grid is carved by the masks first, and the figures say so."""
    from conftest import TINY, trained_run_folder

    run = tmp_path / "run"
    overrides = ["trainer.max_steps=20", "eval.mesh_resolution=0", "renderer.grid.carve=false",
                 "renderer.grid.carve_dilate_px=1"]  # fmt: skip
    trained_run_folder(run, [*TINY, *overrides])
    figs = {}
    for carve in (False, True):
        out = tmp_path / f"bench_{carve}.json"
        res = subprocess.run(
            [sys.executable, "-m", "neurecon.bench", "--run", str(run), "--test-views", "1",
             "--json", str(out), *["--carve"] * carve],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        assert "s/MP" in res.stdout
        figs[carve] = json.loads(out.read_text())
    for f in figs.values():
        assert f["test_views"] == 1 and f["test_mpix"] == 32 * 32 / 1e6 and f["test_s_per_mpix"] > 0
    assert figs[False]["grid_hull"] == 1.0 and figs[True]["grid_hull"] < 0.5
    assert figs[True]["grid_occupied"] <= figs[True]["grid_hull"]
