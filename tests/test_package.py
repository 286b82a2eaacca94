"""neurecon as an installed package: a wheel in a fresh virtualenv, run from an empty folder.

The checkout's ``python train.py`` reads ``conf/`` beside it; an installed neurecon must find its
configs (``neurecon.conf``) and the sweeper plugin (``hydra_plugins``) in the wheel itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import COARSE_GRID, REPO, TINY

# What the wheel is built from: the files setup.py and pyproject.toml name, nothing else.
SOURCES = ("neurecon", "hydra_plugins", "conf", "pyproject.toml", "setup.py", "README.md")
RUN = [o for o in TINY if not o.startswith("eval.mesh_resolution")] + [
    "eval.mesh_resolution=0",
    "trainer.max_steps=20",
    *COARSE_GRID,
]


def _sh(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{cmd[0]} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return res


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A wheel built from a copy of the sources, installed (without its dependencies, which this
    environment has) into a virtualenv that sees this one's packages; its bin/ and env."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    for name in SOURCES:
        p = REPO / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(p, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    _sh([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(root), str(src)],
        root, env)  # fmt: skip
    (wheel,) = root.glob("neurecon-*.whl")
    venv = root / "venv"
    _sh([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], root, env)
    _sh([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
         str(wheel)], root, env)  # fmt: skip
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return wheel, env


def test_the_wheel_ships_the_configs_and_the_sweeper_plugin(installed) -> None:
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "neurecon/conf/config.yaml" in names
    for f in (REPO / "conf").rglob("*.yaml"):  # every config group and preset
        assert f"neurecon/conf/{f.relative_to(REPO / 'conf').as_posix()}" in names
    assert "hydra_plugins/neurecon_optuna_sweeper/sweeper.py" in names
    assert "neurecon/encoders/hashgrid_cpu.c" in names
    assert "hydra_plugins/__init__.py" not in names  # a namespace shared with other plugins
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry).decode()
    for s in ("neurecon-train", "neurecon-eval", "neurecon-export", "neurecon-prepare"):
        assert f"{s} = " in scripts


def test_console_scripts_train_sweep_and_tabulate_from_an_empty_folder(installed, tmp_path):
    _, env = installed
    bin_dir = Path(env["PATH"].split(os.pathsep)[0])
    # The installed package, not the checkout, answers (the checkout is on no path here).
    where = _sh([str(bin_dir / "python"), "-c", "import neurecon, neurecon.cli as c; "
                 "print(neurecon.__file__); print(c.config_dir())"], tmp_path, env)  # fmt: skip
    module, conf = where.stdout.split()
    assert str(bin_dir.parent) in module and str(bin_dir.parent) in conf, where.stdout

    _sh(["neurecon-train", *RUN, "hydra.run.dir=run"], tmp_path, env)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test/psnr"] > 5
    assert (tmp_path / "run" / "train.log").is_file()  # hydra.job.name, not the module's name

    _sh(["neurecon-train", "-m", "sweep=lr_inv_s", "hydra.sweeper.n_trials=2",
         "hydra.sweep.dir=sweep", *RUN], tmp_path, env)  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "sweep").glob("trial_*")) == ["trial_0", "trial_1"]
    assert (tmp_path / "sweep" / "trials.csv").read_text().count("COMPLETE") == 2

    table = _sh(["neurecon-eval", "run", "sweep", "--format", "csv"], tmp_path, env).stdout
    assert len([ln for ln in table.splitlines() if "synthetic" in ln]) == 3, table
    for script in ("neurecon-export", "neurecon-prepare"):
        assert "usage" in _sh([script, "--help"], tmp_path, env).stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "sweep"]  # nothing else written
