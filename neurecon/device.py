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


# Calls that make the host wait for the device: a value read back (item, tolist, bool/int/float
# of a tensor, a copy to the host), or an output whose size depends on the data (nonzero,
# unique, masked indexing), which the host must learn before it can allocate.
SYNCING_CALLS = frozenset(
    {"item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__",
     "nonzero", "unique", "unique_consecutive", "masked_select", "argwhere"}
)  # fmt: skip
_INDEXING = frozenset({"__getitem__", "__setitem__", "index_put", "index_put_"})


def _bool_index(args: tuple) -> bool:
    idx = args[1] if len(args) > 1 else None
    items = idx if isinstance(idx, tuple | list) else (idx,)
    return any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in items)


class HostSyncCounter(torch.overrides.TorchFunctionMode):
    """Counts the calls of a block that would synchronise host and device on a GPU, by name
    (:data:`SYNCING_CALLS`, and indexing with a bool tensor), made from ``packages`` (default:
    neurecon's own code; torch's internals, e.g. Adam's host-side step counter, are not
    counted). Works on any device, so a CPU test can hold the GPU path to its sync budget.
    ``calls``: [(name, "file:line")] in order."""

    def __init__(self, packages: tuple[str, ...] = ("neurecon",)) -> None:
        super().__init__()
        import os

        import neurecon

        root = os.path.dirname(os.path.dirname(neurecon.__file__))
        self._roots = tuple(os.path.join(root, p) + os.sep for p in packages)
        self._torch = os.path.dirname(torch.__file__) + os.sep
        self.calls: list[tuple[str, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in SYNCING_CALLS or (name in _INDEXING and _bool_index(args)):
            self._record(name)
        return func(*args, **(kwargs or {}))

    def _record(self, name: str) -> None:
        import sys

        frame = sys._getframe(2)
        while frame is not None and frame.f_code.co_filename.startswith(self._torch):
            frame = frame.f_back
        if frame is not None and frame.f_code.co_filename.startswith(self._roots):
            self.calls.append((name, f"{frame.f_code.co_filename}:{frame.f_lineno}"))

    def __len__(self) -> int:
        return len(self.calls)
