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
            chunk //= 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            log.warning("%s: out of memory, retrying with chunk=%d", what, chunk)
