"""Untrusted run folders: a hostile saved config is refused before anything in it is called."""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TINY, compose_cfg, trained_run_folder
from hydra.utils import instantiate
from omegaconf import OmegaConf

import evaluate
from neurecon.runs import UntrustedConfigError, check_targets


class _Payload:
    """Unpickling this creates the marker file: what a hostile pickle would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _hostile(tmp: Path, marker: Path) -> dict[str, tuple[str, dict]]:
    """name → (config key whose node is replaced, the hostile node). Each would create
    ``marker`` if Hydra's instantiate called it."""
    payload = tmp / "payload.pkl"
    payload.write_bytes(pickle.dumps(_Payload(marker)))
    script = tmp / "script.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\n")
    m = str(marker)
    return {
        "os.system": ("dataset", {"_target_": "os.system", "_args_": [f"touch {m}"]}),
        "subprocess.run": ("field", {"_target_": "subprocess.run", "_args_": [["touch", m]]}),
        "shutil.copyfile": (
            "renderer.grid",
            {"_target_": "shutil.copyfile", "src": str(script), "dst": m},
        ),
        "runpy.run_path": ("optimizer", {"_target_": "runpy.run_path", "path_name": str(script)}),
        "builtins.exec": (
            "trainer",
            {"_target_": "builtins.exec", "_args_": [f"open({m!r}, 'w').close()"]},
        ),
        "numpy.load (pickle)": (
            "encoder",
            {"_target_": "numpy.load", "file": str(payload), "allow_pickle": True},
        ),
        "numpy.save": (
            "encoder",
            {"_target_": "numpy.save", "file": m, "arr": [1], "_convert_": "all"},
        ),
        "scipy.io.savemat": (
            "optimizer",
            {"_target_": "scipy.io.savemat", "file_name": m, "mdict": {"a": 1}, "_convert_": "all"},
        ),
        "imageio.v3.imwrite": (
            "renderer",
            {
                "_target_": "imageio.v3.imwrite",
                "uri": m,
                "image": [[0]],
                "extension": ".png",
                "_convert_": "all",
            },
        ),
        "torch.load (pickle)": (
            "field.dir_encoder",
            {"_target_": "torch.load", "f": str(payload), "weights_only": False},
        ),
        "torch.save": ("dataset", {"_target_": "torch.save", "obj": 1, "f": m}),
        "joblib.load (pickle)": ("dataset", {"_target_": "joblib.load", "filename": str(payload)}),
        "pickle via neurecon module attribute": (
            "dataset",
            {"_target_": "neurecon.data.io.np.load", "file": str(payload), "allow_pickle": True},
        ),
        "nested inside an allowed node": (
            "dataset.hostile",
            {"_target_": "os.system", "_args_": [f"touch {m}"]},
        ),
        "hidden behind an interpolation": (
            "dataset",
            {"_target_": "${oc.decode:'\"os.system\"'}", "_args_": [f"touch {m}"]},
        ),
    }


def _ran(marker: Path) -> bool:
    """numpy and scipy append their own suffix to the marker's name."""
    return any(marker.parent.glob(f"{marker.name}*"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished 2-step run folder with its saved config and a checkpoint."""
    root = tmp_path_factory.mktemp("run")
    trained_run_folder(root, [*TINY, "dataset.shape=sphere", "trainer.max_steps=2"])
    return root


def _plant(run_dir: Path, dst: Path, key: str, node: dict) -> Path:
    shutil.copytree(run_dir, dst)
    cfg = OmegaConf.load(dst / ".hydra" / "config.yaml")
    OmegaConf.update(cfg, key, node, merge=False, force_add=True)
    OmegaConf.save(cfg, dst / ".hydra" / "config.yaml")
    return dst


def test_hostile_saved_configs_are_refused_before_any_call(run_dir, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    cases = _hostile(tmp_path, marker)
    assert len({node["_target_"] for _, node in cases.values()}) >= 8
    for i, (name, (key, node)) in enumerate(cases.items()):
        run = _plant(run_dir, tmp_path / f"case{i}", key, node)
        capsys.readouterr()
        rc = evaluate.main([str(run), "--recompute"])
        err = capsys.readouterr().err.strip()
        assert rc == 2, name
        assert not _ran(marker), f"{name}: the hostile target ran"
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
        assert f"refusing {key}._target_=" in lines[0], (name, err)
        assert "untrusted run folder" in lines[0]


def test_the_markers_are_real_plain_instantiate_runs_them(tmp_path):
    """Control: the same nodes handed to Hydra's own instantiate do run code (so the test above
    can fail). Hydra blocks none of these; we record which ran."""
    marker = tmp_path / "MARKER"
    ran = []
    for name, (_, node) in _hostile(tmp_path, marker).items():
        if "nested" in name or "interpolation" in name:
            continue
        with contextlib.suppress(Exception):  # some fail after their side effect
            instantiate(OmegaConf.create(node))
        if _ran(marker):
            ran.append(name)
            for p in marker.parent.glob(f"{marker.name}*"):
                p.unlink()
    # Hydra's own block-list stops os.system, subprocess.run, exec and runpy; not the rest.
    assert len(ran) >= 8, ran


def test_the_cli_refuses_with_exit_2_and_one_line(run_dir, tmp_path):
    marker = tmp_path / "MARKER"
    key, node = _hostile(tmp_path, marker)["os.system"]
    run = _plant(run_dir, tmp_path / "evil", key, node)
    res = subprocess.run(
        [sys.executable, "evaluate.py", str(run), "--recompute"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2 and not _ran(marker)
    assert res.stderr.strip().splitlines() == [
        f"error: {run}/.hydra/config.yaml: refusing dataset._target_='os.system': a saved "
        "config may only name neurecon's own classes (untrusted run folder; nothing was run)"
    ]


def test_a_genuine_run_folder_still_recomputes(run_dir, tmp_path):
    run = tmp_path / "ok"
    shutil.copytree(run_dir, run)
    (run / "metrics.json").unlink()
    # Trained with trainer.device=cuda, say: without CUDA here it is evaluated on the CPU.
    cfg = (run / ".hydra" / "config.yaml").read_text().replace("device: cpu", "device: cuda")
    assert "device: cuda" in cfg
    (run / ".hydra" / "config.yaml").write_text(cfg)
    assert evaluate.main([str(run), "--recompute"]) == 0
    assert (run / "metrics.json").is_file()


def test_allow_list_admits_every_shipped_config():
    for group in ("dataset", "encoder", "field", "renderer", "optimizer", "logger"):
        for f in sorted((REPO / "conf" / group).glob("*.yaml")):
            cfg = compose_cfg([f"{group}={f.stem}"])
            check_targets(cfg, f)  # raises on a refused target


def test_non_class_neurecon_callables_are_refused():
    with pytest.raises(UntrustedConfigError, match="save_checkpoint"):
        check_targets(
            OmegaConf.create({"x": {"_target_": "neurecon.train.checkpoint.save_checkpoint"}}),
            "cfg",
        )


def test_a_run_folder_is_rebuilt_without_a_trainer(run_dir):
    """Everything after training is a function of (scene, field, renderer): opening a run
    folder builds no Trainer, and both shipped fields implement the Field protocol."""
    from neurecon.fields.base import Field
    from neurecon.runs import build_run

    run, settings = build_run(run_dir)
    assert run.trainer is None and settings.mesh_resolution == 48
    assert isinstance(run.field, Field) and set(run.field.stats()) == {"inv_s"}
    assert set(run.field.param_groups()) == {"variance", "encoder", "network"}


def test_a_run_folder_from_before_the_background_renames_still_loads(run_dir, tmp_path):
    """``dataset.background``, ``renderer.background`` and ``field.background`` were renamed
    (``*_color``, ``background_model``); a folder saved with the old keys opens as before."""
    from neurecon.runs import RENAMED_KEYS, build_run, load_run_config

    run = tmp_path / "old"
    shutil.copytree(run_dir, run)
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    for old, new in RENAMED_KEYS.items():
        group, key = old.split(".")
        cfg[group][key] = cfg[group].pop(new.split(".")[1])
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    assert "background_color" not in (run / ".hydra" / "config.yaml").read_text()
    loaded = load_run_config(run)
    assert loaded.dataset.background_color == cfg.dataset.background
    assert loaded.field.background_model == cfg.field.background
    assert build_run(run)[0].trainer is None


def test_a_legacy_key_cannot_swap_the_target_after_the_check(run_dir, tmp_path, capsys):
    """The issue's exploit: the check once saw ``oc.select``'s allowed fallback, then the legacy
    rename moved ``numpy.savetxt`` under the selected key, and the build resolved it again and
    wrote attacker text to an attacker path. Renamed first, resolved once, checked as built."""
    marker = tmp_path / "MARKER.pth"
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    cfg.dataset.pop("background_color", None)
    cfg.dataset["background"] = "numpy.savetxt"
    cfg.encoder = OmegaConf.create(
        {
            "_target_": "${oc.select:dataset.background_color,neurecon.encoders.FrequencyEncoder}",
            "_args_": [str(marker), ["import os"]],
            "fmt": "%s",
        }
    )
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    capsys.readouterr()
    assert evaluate.main([str(run), "--recompute"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert not _ran(marker)
    assert len(err) == 1 and "refusing encoder._target_='numpy.savetxt'" in err[0], err


@pytest.mark.parametrize(
    ("node", "why"),
    [
        ({"_target_": "neurecon.log.loggers.CSVLogger", "filename": "../../evil.csv"}, "outside"),
        ({"_target_": "neurecon.log.loggers.CSVLogger", "out_dir": "/"}, "outside"),
        ({"_target_": "${oc.env:HOME}"}, "oc.env"),
        ({"_target_": "neurecon.train.Trainer", "x": "\\${oc.env:HOME}"}, "another interpolation"),
        ({"_target_": "neurecon.metrics.lpips._NumpyOnlyUnpickler"}, "refusing"),
        ({"_target_": "neurecon.atomic.atomic_write"}, "refusing"),
        ({"_target_": "neurecon.encoders.FrequencyEncoder", "_args_": "x"}, "not a list"),
        ({"_target_": "neurecon.encoders.FrequencyEncoder", "_partial_": "yes"}, "true/false"),
    ],
)
def test_gadgets_and_resolver_tricks_are_refused(tmp_path, node, why):
    from neurecon.runs import resolve_untrusted

    with pytest.raises(UntrustedConfigError, match=why):
        resolve_untrusted(OmegaConf.create({"logger": node}), "cfg", tmp_path)


def test_a_logger_writing_inside_the_run_folder_is_fine(tmp_path):
    from neurecon.runs import resolve_untrusted

    node = {"_target_": "neurecon.log.loggers.CSVLogger", "filename": "logs/log.csv"}
    cfg = resolve_untrusted(OmegaConf.create({"logger": node}), "cfg", tmp_path)
    assert cfg.logger.filename == "logs/log.csv"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg2://user:s3cr%40t@db.lan:5432/opt", "user:***@db.lan:5432"),
        ("postgresql://user:a:b@host/db", "user:***@host"),  # a colon in the password
        ("postgresql://:only@host/db", ":***@host"),
    ],
)
def test_storage_urls_are_redacted_by_sqlalchemys_parser(url, shown):
    from neurecon.storage import has_password, redact

    assert has_password(url) and shown in redact(url)
    assert "s3cr" not in redact(url) and "only" not in redact(url) and ":b@" not in redact(url)


def test_urls_without_a_password_are_left_as_they_are():
    from neurecon.storage import has_password, redact

    for spec in ("postgresql://user@host/db", "sqlite:///x.db", "multirun/x/optuna.journal"):
        assert not has_password(spec) and redact(spec) == spec


def test_a_password_in_callbacks_prune_storage_is_refused_like_the_sweepers():
    from neurecon.build import build
    from neurecon.errors import ConfigError

    url = "postgresql://user:hunter2@host/db"
    node = f"{{_target_: neurecon.train.pruning.PruningCallback, study: s, storage: '{url}'}}"
    cfg = compose_cfg([*TINY, f"+callbacks.prune={node}"])
    with pytest.raises(ConfigError, match=r"callbacks.prune.storage=.*user:\*\*\*@host") as e:
        build(cfg)
    assert "hunter2" not in str(e.value) and "PGPASSWORD" in str(e.value)


def test_redaction_without_sqlalchemy_installed(monkeypatch):
    """A run without the sweep extras (no SQLAlchemy, as on a bare GPU image) still refuses
    and redacts a password in callbacks.prune.storage."""
    from neurecon.storage import has_password, redact

    monkeypatch.setitem(sys.modules, "sqlalchemy.engine", None)  # import fails
    url = "postgresql://user:hunter2@host/db"
    assert has_password(url) and redact(url) == "postgresql://user:***@host/db"
    assert not has_password(None) and not has_password("a/b.journal")
