"""Checkpoints: written atomically, loaded without executing code from the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from neurecon.io import atomic_write


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=True)


def latest_checkpoint(folder: Path) -> Path | None:
    """Newest complete ``step_*.ckpt`` (temporary files from an interrupted save start with '.')."""
    ckpts = sorted(folder.glob("step_*.ckpt")) if folder.is_dir() else []
    return ckpts[-1] if ckpts else None


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Keep the newest ``keep`` ``step_*.ckpt`` files."""
    ckpts = sorted(folder.glob("step_*.ckpt"))
    for old in ckpts[: max(0, len(ckpts) - keep)]:
        old.unlink(missing_ok=True)


def checkpoint_to_resume(out: Path, resume: str, overwrite: bool) -> Path | None:
    """The checkpoint a run in ``out`` continues from (``trainer.resume``: never | auto | a
    path), refusing to clobber a finished or unfinished earlier run unless ``overwrite``."""
    from neurecon.errors import ConfigError

    ckpt = None
    if resume == "auto":
        ckpt = latest_checkpoint(out / "checkpoints")
    elif resume != "never":
        ckpt = Path(resume)
    if ckpt is None and not overwrite:
        if (out / "metrics.json").exists():
            raise ConfigError(
                f"{out} already holds a finished run (metrics.json); choose another "
                "hydra.run.dir, or set trainer.overwrite=true to replace it"
            )
        if latest_checkpoint(out / "checkpoints") is not None:
            raise ConfigError(
                f"{out} holds checkpoints of an unfinished run; continue it with "
                "trainer.resume=auto, or set trainer.overwrite=true to start over"
            )
    return ckpt
