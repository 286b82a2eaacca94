"""Checkpoints: written atomically, loaded without executing code from the file."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from neurecon.atomic import atomic_write
from neurecon.errors import NeuReconError, one_line


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


class CheckpointError(NeuReconError):
    """A checkpoint that cannot be read, or does not hold a run's state."""


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint's state, read with ``weights_only`` (tensors and plain containers; nothing
    in the file can run). A corrupt or foreign file is one :class:`CheckpointError` naming it."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # zip, unpickling and storage errors of many kinds
        raise CheckpointError(f"{path}: not a readable checkpoint ({one_line(e, 200)})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CheckpointError(f"{path}: not a neurecon checkpoint (no step)")
    if not isinstance(state.get("field"), dict):
        raise CheckpointError(f"{path}: not a neurecon checkpoint (no field state)")
    return state


@contextmanager
def restoring(path: str | Path) -> Iterator[None]:
    """Loading a checkpoint's state into modules: a state that does not fit (other shapes, a
    missing key, a wrong type) is a :class:`CheckpointError` naming the file."""
    try:
        yield
    except NeuReconError:
        raise
    except (RuntimeError, KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise CheckpointError(
            f"{path}: does not fit this run's config ({type(e).__name__}: {one_line(e, 200)})"
        ) from None


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
