"""Out-of-memory handling for chunked work (validation renders, mesh extraction)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import torch

log = logging.getLogger(__name__)
T = TypeVar("T")

# torch >= 2.5 has torch.OutOfMemoryError; older versions only the CUDA one.
OOM_ERRORS: tuple[type[BaseException], ...] = tuple(
    {getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), torch.cuda.OutOfMemoryError}
)


def retry_on_oom(fn: Callable[[int], T], chunk: int, what: str) -> tuple[T, int]:
    """Run ``fn(chunk)``; on out-of-memory halve ``chunk`` and retry (warning each time).

    Returns the result and the chunk size that worked, so callers can keep using it.
    """
    while True:
        try:
            return fn(chunk), chunk
        except OOM_ERRORS:
            if chunk <= 1:
                raise
        # Out of the handler: the exception's traceback, which holds the failed call's frames
        # and their tensors, is released now, so empty_cache can return their memory.
        chunk //= 2
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        log.warning("%s: out of memory, retrying with chunk=%d", what, chunk)


def _release_free_memory() -> None:
    """Give freed heap pages back to the OS (glibc keeps them mapped; RSS would not drop)."""
    import contextlib
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):  # AttributeError: not glibc
            ctypes.CDLL(name).malloc_trim(0)


class PeakMemory:
    """Peak memory in MiB: ``torch.cuda.max_memory_allocated`` on CUDA, the process's peak
    resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) on CPU.

    ``reset()`` starts a new window, ``read()`` returns the peak since then; also a context
    manager (``with PeakMemory(dev) as pm: ...; pm.mib``). Where the RSS peak cannot be reset
    (not Linux) the peak since the process started is reported and ``kind`` says so.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.mib = float("nan")
        self.kind = "cuda max allocated" if self.device.type == "cuda" else "peak RSS"

    @staticmethod
    def _hwm_kib() -> int | None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return None

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        _release_free_memory()  # else the new window starts at the old peak's heap size
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
        except OSError:
            self.kind = "peak RSS since process start"

    def read(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        kib = self._hwm_kib()
        if kib is None:
            import resource

            kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.kind = "peak RSS since process start"
        return kib / 1024

    def __enter__(self) -> PeakMemory:
        self.reset()
        return self

    def __exit__(self, *exc: object) -> None:
        self.mib = self.read()
