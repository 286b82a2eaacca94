"""Opening a finished run folder: its saved config is untrusted input.

A run folder travels (a teammate's sweep, an archive from a paper's page, a W&B artifact), so
``RUN/.hydra/config.yaml`` may have been written by anyone. Hydra's ``instantiate`` calls
whatever ``_target_`` names, and its block-list stops only the obvious callables; many others
run code when handed a crafted argument (unpickling loaders, module importers, helpers that
shell out). So a saved config is built only after every ``_target_`` in it passes an
allow-list: neurecon's own public classes, plus the few outside classes named in
:data:`EXTRA_TARGETS`. Checkpoints are read with ``torch.load(weights_only=True)``.

The check must see the tree that is built, so the order is fixed (:func:`load_run_config`):
legacy keys are renamed first; the tree is resolved once, on a copy, with :data:`RESOLVERS`
only; every ``_target_``, ``_args_`` and ``_partial_`` of that final tree is checked, and a
writing class's paths must stay in the run folder; the build then uses exactly that tree (no
``${`` is left to resolve a second time). Checking first and renaming or resolving afterwards
let a legacy key swap an allowed fallback for ``numpy.savetxt``.

A config the user composes on the command line keeps full Hydra freedom: ``train.py`` does not
come through here.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.basecontainer import BaseContainer

from neurecon.errors import NeuReconError

# Classes from outside neurecon that a saved config may name (exact dotted paths).
EXTRA_TARGETS: frozenset[str] = frozenset(
    {"torch.optim.Adam", "torch.optim.AdamW"}
    # schedules taking numbers only (optimizer.schedule)
    | {
        f"torch.optim.lr_scheduler.{c}"
        for c in ("StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR")
    }
)

# OmegaConf's own resolvers that a saved config may use. ``oc.env`` is left out: a run folder
# must not be shaped by the reader's environment (nor copy its secrets into paths and names).
RESOLVERS: frozenset[str] = frozenset(
    {"oc.select", "oc.decode", "oc.create", "oc.deprecated", "oc.dict.keys", "oc.dict.values"}
)

# Keys renamed since earlier releases (old → new), so older run folders still load.
RENAMED_KEYS: dict[str, str] = {
    "dataset.background": "dataset.background_color",
    "renderer.background": "renderer.background_color",
    "field.background": "field.background_model",
}


class UntrustedConfigError(NeuReconError):
    """A saved config names a ``_target_`` outside the allow-list; nothing was called."""


def _targets(node: Any, path: str = "") -> list[tuple[str, dict]]:
    """Every node holding a ``_target_`` in a resolved container, with its dotted key."""
    found: list[tuple[str, dict]] = []
    if isinstance(node, dict):
        if "_target_" in node:
            found.append((path, node))
        for k, v in node.items():
            found += _targets(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += _targets(v, f"{path}[{i}]")
    return found


def _strings(node: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every (key, value) leaf and every dict key, for the no-interpolation check."""
    out: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{path}.{k}" if path else str(k)
            out.append((key, k))
            out += _strings(v, key)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _strings(v, f"{path}[{i}]")
    else:
        out.append((path, node))
    return out


def target_class(target: Any) -> type | None:
    """The class ``target`` names when it is allowed (a public class defined in neurecon, or
    one of EXTRA_TARGETS), else None.

    The module is imported only when the name starts with ``neurecon.`` (our own code), and the
    object must be a class *defined* in a neurecon module: Hydra resolves a dotted path by
    attribute access, so ``neurecon.data.io.np.load`` would otherwise reach numpy through a
    module attribute. Private names (``_Unpickler``) are never targets.
    """
    if not isinstance(target, str) or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)+", target):
        return None
    module_name, _, attr = target.rpartition(".")
    if target not in EXTRA_TARGETS and (
        not target.startswith("neurecon.") or any(p.startswith("_") for p in target.split("."))
    ):
        return None
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError):
        return None
    if not inspect.isclass(obj):
        return None
    if target in EXTRA_TARGETS or obj.__module__.split(".")[0] == "neurecon":
        return obj
    return None


def _allowed(target: Any) -> bool:
    return target_class(target) is not None


@contextlib.contextmanager
def _only_resolvers(names: frozenset[str]) -> Iterator[None]:
    """Resolve with OmegaConf's own resolvers alone: any other (custom, registered by some
    imported library, or unknown) fails as unsupported instead of running. The registry is a
    class attribute, swapped for the block: run folders are loaded from the main thread."""
    saved = BaseContainer._resolvers
    BaseContainer._resolvers = {k: v for k, v in saved.items() if k in names}
    try:
        yield
    finally:
        BaseContainer._resolvers = saved


# ``trainer.loss`` of earlier releases (weights and the colour loss's settings) → ``loss``.
LEGACY_LOSS_KEYS: dict[str, tuple[str, str]] = {
    "color": ("color", "weight"),
    "color_type": ("color", "kind"),
    "color_reduction": ("color", "reduction"),
    "eikonal": ("eikonal", "weight"),
    "mask": ("mask", "weight"),
}
LOSS_TARGETS = {
    "color": "neurecon.losses.ColorLoss",
    "eikonal": "neurecon.losses.EikonalLoss",
    "mask": "neurecon.losses.MaskLoss",
}
# Earlier releases' defaults, for keys their saved trainer.loss did not spell out.
LEGACY_LOSS_DEFAULTS = {
    "color": {"weight": 1.0},
    "eikonal": {"weight": 0.1},
    "mask": {"weight": 0.1},
}


def _migrate_loss(cfg: DictConfig) -> None:
    """A run folder saved before the ``loss`` group: its ``trainer.loss`` node becomes the
    ``loss`` terms, values moved as written."""
    trainer = cfg._get_node("trainer") if "trainer" in cfg else None
    if not isinstance(trainer, DictConfig) or "loss" in cfg or "loss" not in trainer:
        return
    old = trainer._get_node("loss")
    terms: dict[str, dict] = {k: {"_target_": t, **LEGACY_LOSS_DEFAULTS[k]}
                              for k, t in LOSS_TARGETS.items()}  # fmt: skip
    if isinstance(old, DictConfig):
        for key in old:
            if key not in LEGACY_LOSS_KEYS:
                raise ValueError(f"trainer.loss.{key} is not a key of any release")
            term, field = LEGACY_LOSS_KEYS[str(key)]
            terms[term][field] = old._get_node(key)._value()
    with open_dict(cfg), open_dict(trainer):
        del trainer["loss"]
        cfg["loss"] = terms


# Side jobs of training: an evaluation of a saved run never builds them, so they are dropped
# before the checks (a folder whose run had a callback of its user's own still opens). The
# trainer keys are those of releases before the callbacks group.
SIDE_JOB_KEYS = ("callbacks", "pruning", "deadline", "log_every", "val_every", "val_views",
                 "ckpt_every", "keep_ckpts")  # fmt: skip


def _drop_side_jobs(cfg: DictConfig) -> None:
    trainer = cfg._get_node("trainer") if "trainer" in cfg else None
    with open_dict(cfg):
        cfg.pop("callbacks", None)
    if isinstance(trainer, DictConfig):
        with open_dict(trainer):
            for key in SIDE_JOB_KEYS:
                trainer.pop(key, None)


# Releases before the eval node kept its keys in ``trainer`` and a ``metrics`` group:
# (old node, old key) → (eval metric node or None for eval itself, new key).
LEGACY_EVAL_KEYS: dict[tuple[str, str], tuple[str | None, str]] = {
    ("trainer", "chunk"): (None, "chunk"),
    ("trainer", "mesh_resolution"): (None, "mesh_resolution"),
    ("trainer", "video_frames"): (None, "video_frames"),
    ("trainer", "chamfer_points"): ("chamfer", "points"),
    ("trainer", "chamfer_threshold"): ("chamfer", "threshold"),
    ("metrics", "lpips_net"): ("lpips", "net"),
    ("metrics", "dtu_gt_root"): ("dtu", "gt_root"),
    ("metrics", "dtu_scan"): ("dtu", "scan"),
    ("metrics", "dtu_protocol"): ("dtu", "protocol"),
    ("metrics", "dtu_mask_dilate"): ("dtu", "mask_dilate"),
}


def _migrate_eval(cfg: DictConfig) -> None:
    """A run folder saved before the ``eval`` node: its ``trainer.{chunk,mesh_resolution,...}``
    and ``metrics.*`` keys become ``eval`` and its built-in metric nodes, values moved as
    written (keys it did not spell out take today's defaults)."""
    if "eval" in cfg or "trainer" not in cfg:
        return
    from neurecon.schema import METRICS

    metrics = {
        name: {"_target_": f"{c.__module__}.{c.__qualname__}"} for name, c in METRICS.items()
    }
    node: dict[str, Any] = {"metrics": metrics}
    with open_dict(cfg):
        for (group, key), (metric, new) in LEGACY_EVAL_KEYS.items():
            old = cfg._get_node(group) if group in cfg else None
            if not isinstance(old, DictConfig) or key not in old:
                continue
            value = old._get_node(key)._value()
            (node if metric is None else metrics[metric])[new] = value
            with open_dict(old):
                del old[key]
        legacy = cfg._get_node("metrics") if "metrics" in cfg else None
        if isinstance(legacy, DictConfig) and len(legacy) == 0:
            del cfg["metrics"]
        cfg["eval"] = node


# optimizer.decay of releases before the optimizer.schedule node → the schedule's class.
LEGACY_DECAYS = {
    "cosine": "neurecon.optim.schedules.WarmupCosine",
    "exp": "neurecon.optim.schedules.WarmupExp",
    "none": "neurecon.optim.schedules.WarmupConstant",
}


def _migrate_schedule(cfg: DictConfig) -> None:
    """A run folder saved before the ``optimizer.schedule`` node: ``optimizer.{warmup_steps,
    decay, final_ratio}`` become it (values moved as written; releases' defaults otherwise)."""
    opt = cfg._get_node("optimizer") if "optimizer" in cfg else None
    if not isinstance(opt, DictConfig) or "schedule" in opt:
        return
    if not {"warmup_steps", "decay", "final_ratio"} & set(opt.keys()):
        return
    decay = opt._get_node("decay")._value() if "decay" in opt else "cosine"
    if decay not in LEGACY_DECAYS:
        raise ValueError(f"optimizer.decay={decay!r} is not a decay of any release")
    node: dict[str, Any] = {"_target_": LEGACY_DECAYS[decay], "_partial_": True,
                            "warmup_steps": 0, "final_ratio": 0.05}  # fmt: skip
    with open_dict(opt):
        for key in ("warmup_steps", "final_ratio"):
            if key in opt:
                node[key] = opt._get_node(key)._value()
                del opt[key]
        opt.pop("decay", None)
        opt["schedule"] = node


def _rename_legacy(cfg: DictConfig) -> None:
    _migrate_loss(cfg)
    _migrate_schedule(cfg)
    _migrate_eval(cfg)
    _drop_side_jobs(cfg)
    for old, new in RENAMED_KEYS.items():
        group, key = old.split(".")
        node = cfg._get_node(group) if group in cfg else None
        new_key = new.split(".")[1]
        if isinstance(node, DictConfig) and key in node and new_key not in node:
            raw = node._get_node(key)  # moved as written, interpolation and all
            node[new_key] = raw._value() if raw is not None else None
            del node[key]


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _check_node(key: str, node: dict, source: Any, run_dir: Path | None) -> None:
    cls = target_class(node["_target_"])
    if cls is None:
        raise UntrustedConfigError(
            f"{source}: refusing {key + '.' if key else ''}_target_={node['_target_']!r}: a saved "
            "config may only name neurecon's own classes (untrusted run folder; nothing was run)"
        )
    if "_args_" in node and not isinstance(node["_args_"], list):
        raise UntrustedConfigError(f"{source}: refusing {key}._args_: not a list")
    if "_partial_" in node and not isinstance(node["_partial_"], bool):
        raise UntrustedConfigError(f"{source}: refusing {key}._partial_: not true/false")
    # A class that writes where its arguments say (a logger's out_dir/filename) must not be
    # pointed outside the run folder: an allowed class must not become a file-writing gadget.
    outputs = getattr(cls, "output_paths", ())
    if outputs and (node.get("_args_") or node.get("_partial_")):
        raise UntrustedConfigError(
            f"{source}: refusing {key}: {node['_target_']} writes files; its paths must be named"
        )
    parts = [str(node[p]) for p in outputs if node.get(p) is not None]
    root = (run_dir or Path.cwd()).resolve()
    # each on its own too: a filename is joined to whatever out_dir the caller passes
    for dest in [root.joinpath(*parts).resolve()] + [root.joinpath(p).resolve() for p in parts]:
        if not _inside(dest, root):
            raise UntrustedConfigError(
                f"{source}: refusing {key}: it would write to {dest}, outside the run folder {root}"
            )


def resolve_untrusted(
    cfg: DictConfig | ListConfig, source: str | Path, run_dir: str | Path | None = None
) -> DictConfig | ListConfig:
    """The one tree that will be built from an untrusted ``cfg``, checked as built.

    Resolved once, on a copy, with only :data:`RESOLVERS`; every ``_target_`` (also inside
    ``_args_`` and nested nodes) allowed, ``_args_`` a list, ``_partial_`` a boolean, a writing
    class's paths inside ``run_dir``; and no ``${`` left anywhere, so nothing is resolved a
    second time when the tree is built. Raises :class:`UntrustedConfigError` otherwise.
    """
    try:
        with _only_resolvers(RESOLVERS):
            container = OmegaConf.to_container(copy.deepcopy(cfg), resolve=True)
    except Exception as e:  # an unknown resolver, a loop, a missing key: refuse, do not guess
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UntrustedConfigError(f"{source}: cannot resolve the saved config ({msg})") from None
    for key, value in _strings(container):
        if isinstance(value, str) and "${" in value:
            raise UntrustedConfigError(
                f"{source}: refusing {key}: an interpolation that resolves to another "
                "interpolation (untrusted run folder; nothing was run)"
            )
    for key, node in _targets(container):
        _check_node(key, node, source, Path(run_dir) if run_dir is not None else None)
    return OmegaConf.create(container)


def check_targets(cfg: DictConfig | ListConfig, source: str | Path) -> None:
    """Raise :class:`UntrustedConfigError` naming the first ``_target_`` not allowed (see
    :func:`resolve_untrusted`, which also returns the checked tree)."""
    resolve_untrusted(cfg, source)


def load_run_config(run_dir: str | Path) -> DictConfig:
    """``RUN/.hydra/config.yaml`` as it will be built: legacy keys renamed first, then resolved
    once and checked (:func:`resolve_untrusted`). Build from the returned tree only."""
    run_dir = Path(run_dir)
    cfg_file = run_dir / ".hydra" / "config.yaml"
    if cfg_file.is_symlink() or not cfg_file.is_file():
        raise NeuReconError(f"{cfg_file} is missing or not a regular file")
    try:
        cfg = OmegaConf.load(cfg_file)  # YAML safe-loading: data only, no python/* tags
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UntrustedConfigError(f"{cfg_file}: not a readable config ({msg})") from None
    if not isinstance(cfg, DictConfig):
        raise UntrustedConfigError(f"{cfg_file}: not a mapping")
    try:
        _rename_legacy(cfg)
    except Exception as e:
        raise UntrustedConfigError(f"{cfg_file}: cannot rename legacy keys ({e})") from None
    checked = resolve_untrusted(cfg, cfg_file, run_dir)
    if not isinstance(checked, DictConfig):
        raise UntrustedConfigError(f"{cfg_file}: not a mapping")
    return checked


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
    from neurecon.train.checkpoint import latest_checkpoint, load_checkpoint, restoring

    run_dir = Path(run_dir)
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    if not (run_dir / ".hydra" / "config.yaml").is_file() or ckpt is None:
        raise NeuReconError(
            f"{run_dir}: not a trained run folder (needs .hydra/config.yaml and "
            "checkpoints/step_*.ckpt)"
        )
    run, settings = build_run(run_dir, device)
    state = load_checkpoint(ckpt, settings.device)
    with restoring(ckpt):
        run.field.load_state_dict(state["field"])
        if state.get("renderer"):  # the occupancy grid, when the renderer has one
            run.renderer.load_state_dict(state["renderer"])
    run.field.to(settings.device)
    run.renderer.to(settings.device)
    run.renderer.setup(settings.device)
    run.renderer.ensure_grid(run.field)
    return run, settings, int(state["step"]), ckpt
