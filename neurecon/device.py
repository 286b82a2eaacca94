"""Which torch device a run uses."""

from __future__ import annotations

import torch

from neurecon.errors import ConfigError


def resolve_device(device: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu`` or ``cuda[:i]`` (an error without CUDA)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={device!r} but CUDA is not available here")
    return torch.device(device)
