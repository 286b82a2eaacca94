"""Opening a finished run folder: its saved config is untrusted input.

A run folder travels (a teammate's sweep, an archive from a paper's page, a W&B artifact), so
``RUN/.hydra/config.yaml`` may have been written by anyone. Hydra's ``instantiate`` calls
whatever ``_target_`` names, and its block-list stops only the obvious callables; many others
run code when handed a crafted argument (unpickling loaders, module importers, helpers that
shell out). So a saved config is built only after every ``_target_`` in it passes an
allow-list: neurecon's own classes, plus the few outside classes named in
:data:`EXTRA_TARGETS`. Checkpoints are read with ``torch.load(weights_only=True)``.

A config the user composes on the command line keeps full Hydra freedom: ``train.py`` does not
come through here.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from neurecon.errors import NeuReconError

# Classes from outside neurecon that a saved config may name (exact dotted paths).
EXTRA_TARGETS: frozenset[str] = frozenset({"torch.optim.Adam", "torch.optim.AdamW"})


# Keys renamed since earlier releases (old → new), so older run folders still load.
RENAMED_KEYS: dict[str, str] = {
    "dataset.background": "dataset.background_color",
    "renderer.background": "renderer.background_color",
    "field.background": "field.background_model",
}


class UntrustedConfigError(NeuReconError):
    """A saved config names a ``_target_`` outside the allow-list; nothing was called."""


def _targets(node: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every ``_target_`` value in a (resolved) container, with its dotted key."""
    found: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{path}.{k}" if path else str(k)
            if k == "_target_":
                found.append((key, v))
            else:
                found += _targets(v, key)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += _targets(v, f"{path}[{i}]")
    return found


def _allowed(target: Any) -> bool:
    """True when ``target`` names a class defined in neurecon, or one of EXTRA_TARGETS.

    The module is imported only when the name starts with ``neurecon.`` (our own code), and the
    object must be a class *defined* in a neurecon module: Hydra resolves a dotted path by
    attribute access, so ``neurecon.data.io.np.load`` would otherwise reach numpy through a
    module attribute.
    """
    if not isinstance(target, str):
        return False
    if target in EXTRA_TARGETS:
        return True
    if not target.startswith("neurecon."):
        return False
    module_name, _, attr = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError):
        return False
    return inspect.isclass(obj) and obj.__module__.split(".")[0] == "neurecon"


def check_targets(cfg: DictConfig | ListConfig, source: str | Path) -> None:
    """Raise :class:`UntrustedConfigError` naming the first ``_target_`` not allowed.

    Interpolations are resolved first, so a target cannot hide behind ``${...}``.
    """
    try:
        container = OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:  # an interpolation that does not resolve: refuse, do not guess
        raise UntrustedConfigError(f"{source}: cannot resolve the saved config ({e})") from None
    for key, target in _targets(container):
        if not _allowed(target):
            raise UntrustedConfigError(
                f"{source}: refusing {key}={target!r}: a saved config may only name "
                "neurecon's own classes (untrusted run folder; nothing was run)"
            )


def load_run_config(run_dir: str | Path) -> DictConfig:
    """``RUN/.hydra/config.yaml``, checked against the allow-list (see module docstring)."""
    cfg_file = Path(run_dir) / ".hydra" / "config.yaml"
    if not cfg_file.is_file():
        raise NeuReconError(f"{cfg_file} is missing")
    try:
        cfg = OmegaConf.load(cfg_file)  # YAML safe-loading: data only
    except Exception as e:
        raise UntrustedConfigError(f"{cfg_file}: not a readable config ({e})") from None
    if not isinstance(cfg, DictConfig):
        raise UntrustedConfigError(f"{cfg_file}: not a mapping")
    check_targets(cfg, cfg_file)
    for old, new in RENAMED_KEYS.items():
        group, key = old.split(".")
        node = cfg.get(group)
        if isinstance(node, DictConfig) and key in node and new.split(".")[1] not in node:
            node[new.split(".")[1]] = node.pop(key)
    return cfg


def build_run(run_dir: str | Path, device: Any = None):
    """The :class:`neurecon.build.Run` of a saved run folder (scene, field, renderer; no
    trainer), built through the allow-list, and its evaluation settings (on ``device``, else
    the run's own device when this machine has it, else the CPU)."""
    from neurecon.build import build
    from neurecon.eval import EvalSettings

    cfg = load_run_config(run_dir)
    return build(cfg, with_trainer=False), EvalSettings.from_config(cfg, device)


def load_trained_run(run_dir: str | Path, device: Any = None):
    """:func:`build_run` with the field and renderer restored from the newest checkpoint
    (``weights_only``). Returns (run, settings, step, checkpoint path)."""
    from neurecon.train.checkpoint import latest_checkpoint, load_checkpoint

    run_dir = Path(run_dir)
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    if not (run_dir / ".hydra" / "config.yaml").is_file() or ckpt is None:
        raise NeuReconError(
            f"{run_dir}: not a trained run folder (needs .hydra/config.yaml and "
            "checkpoints/step_*.ckpt)"
        )
    run, settings = build_run(run_dir, device)
    state = load_checkpoint(ckpt, settings.device)
    run.field.load_state_dict(state["field"])
    if state.get("renderer"):  # the occupancy grid, when the renderer has one
        run.renderer.load_state_dict(state["renderer"])
    run.field.to(settings.device)
    run.renderer.to(settings.device)
    run.renderer.setup(settings.device)
    run.renderer.ensure_grid(run.field)
    return run, settings, int(state["step"]), ckpt
