"""C kernels for the multiresolution hash encoding on CPUs (``encoder.backend=cpu``).

The three primitives of ``hashgrid_ops.py`` (encode, the table's gradient, the input's
gradient) in plain C with OpenMP (``hashgrid_cpu.c``): each point's 8 corners, weights and
table rows stay in registers, where the PyTorch backend builds (L, N, 8) tensors for every
factor and scatters the gradient with ``index_add_``. Threads split the points, level by level
(one level's rows stay in cache), or the levels for the table's gradient (levels own disjoint
parts of the table, so no atomics). The double backward's two sums along a direction share one
pass (:meth:`CpuCorners.direction_grads`).

The source has no Python or torch headers: it is compiled on first use (about a second) with
the system's C compiler into a cache folder (``$NEURECON_CACHE``, else
``$XDG_CACHE_HOME/neurecon``, else ``~/.cache/neurecon``), keyed by the source and the flags,
and called through ctypes. A cached library is loaded only when it and its folder are the
user's own and writable by no one else (loading a library runs its code); otherwise the kernels
are built again (in a private temporary folder when the cache folder is not private). No
compiler (or a failed build) means no kernels: the encoder warns once and uses the PyTorch
backend, which these kernels are tested against.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import shlex
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from neurecon.atomic import atomic_write
from neurecon.encoders.hashgrid_ops import Levels
from neurecon.encoders.hashgrid_ops import hash_encode as _autograd_encode

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("hashgrid_cpu.c")
# -ffp-contract=off: no fused multiply-adds, so positions round as the PyTorch backend's do.
# $NEURECON_CFLAGS adds flags (e.g. "-fsanitize=address,undefined -g" to check the kernels'
# memory safety, as tests/test_hashgrid_kernels.py does); a build is cached per flag set.
FLAGS = [
    "-O3",
    "-ffp-contract=off",
    "-fPIC",
    "-shared",
    *shlex.split(os.environ.get("NEURECON_CFLAGS", "")),
]
# The kernels and their pointer arguments (u, tensors, the 4 level constants); then n_dense,
# N, L, F (int64) and the thread count (int), as in hashgrid_cpu.c.
_FUNCS = {"hg_encode": 8, "hg_table_grad": 10, "hg_input_grad": 8}


def cache_dir() -> Path:
    """Where compiled kernels are kept (see the module docstring)."""
    if os.environ.get("NEURECON_CACHE"):
        return Path(os.environ["NEURECON_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "neurecon"


def _compiler() -> str | None:
    cands = [os.environ.get("CC"), (sysconfig.get_config_var("CC") or "").split(" ")[0]]
    for cand in [*cands, "cc", "gcc", "clang"]:
        if cand and shutil.which(cand):
            return shutil.which(cand)
    return None


def _build(cc: str, out: Path, openmp: bool) -> bool:
    """Compile the source into ``out`` atomically (:func:`neurecon.atomic.atomic_write`), so that
    concurrent runs (a sweep's workers) never load half a library."""

    def compile_to(tmp: Path) -> None:
        cmd = [cc, *FLAGS, *(["-fopenmp"] if openmp else []), "-o", str(tmp), str(SOURCE)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise subprocess.SubprocessError(f"{' '.join(cmd)} failed:\n{done.stderr}")

    try:  # 0755 whatever the umask: a group-writable build would not be loaded
        atomic_write(out, compile_to, mode=0o755)
        return True
    except (OSError, subprocess.SubprocessError) as e:  # an unwritable folder, a failed build
        log.debug("hash-grid kernels: building %s failed: %s", out, e)
        return False


def _private(path: Path) -> bool:
    """Ours and writable by nobody else. Loading a library runs its code, so one that another
    user could have written (a shared ``NEURECON_CACHE``, a world-writable folder) is not
    loaded. (No owner check where the OS has no uids.)"""
    getuid = getattr(os, "getuid", None)
    try:
        st = path.stat()
    except OSError:
        return False
    return getuid is None or (st.st_uid == getuid() and not st.st_mode & 0o022)


def _load(cc: str, key: str, openmp: bool) -> ctypes.CDLL | None:
    """The cached build if it is private, else a fresh one (in a private temporary folder
    when the cache folder is not private)."""
    folder = cache_dir()
    so = folder / f"hashgrid_cpu_{key}{'_omp' if openmp else ''}.so"
    if so.is_file() and _private(so) and _private(folder):
        return ctypes.CDLL(str(so))
    with contextlib.suppress(OSError):  # unwritable: not private either, built elsewhere
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not _private(folder):
        log.info("encoder: %s is not private; building the hash-grid kernels elsewhere", folder)
        tmp = Path(tempfile.mkdtemp(prefix="neurecon-kernels-"))
        try:
            # Loaded libraries stay mapped after their file is gone, so nothing is left behind.
            return ctypes.CDLL(str(tmp / so.name)) if _build(cc, tmp / so.name, openmp) else None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if not _build(cc, so, openmp):
        return None
    for old in folder.glob("hashgrid_cpu_*.so"):  # builds of earlier sources or flags
        if not old.name.startswith(f"hashgrid_cpu_{key}"):  # keeps this one and its twin
            with contextlib.suppress(OSError):  # a process that loaded it keeps its mapping
                old.unlink()
    return ctypes.CDLL(str(so))


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, building them on first use; None where they cannot be built."""
    if not SOURCE.is_file():  # an install without its package data
        log.warning("encoder: %s is missing; the hash grid runs in PyTorch ops", SOURCE)
        return None
    cc = _compiler()
    if cc is None:
        log.warning("encoder: no C compiler found (set CC); the hash grid runs in PyTorch ops")
        return None
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join([cc, *FLAGS]).encode()).hexdigest()[:16]
    for openmp in (True, False):  # without OpenMP (Apple's clang): one thread, still fused
        try:
            lib = _load(cc, key, openmp)
        except OSError as e:  # a library that will not load
            log.debug("hash-grid kernels (openmp=%s): %s", openmp, e)
            lib = None
        if lib is not None:
            break
    else:
        log.warning(
            "encoder: could not build the hash grid's C kernels with %s (%s); using PyTorch ops",
            cc, SOURCE,
        )  # fmt: skip
        return None
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    for name, n_ptr in _FUNCS.items():
        fn = getattr(lib, name)
        fn.argtypes = [ptr] * n_ptr + [i64] * 4 + [ctypes.c_int]
        fn.restype = None
    return lib


def cpu_kernels_available() -> bool:
    """The kernels are built (or can be) on this machine."""
    return library() is not None


def _p(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class CpuCorners:
    """The three primitives of ``hashgrid_ops`` as C calls for points ``u`` (N, 3) on the CPU;
    the source is the table (T, F) itself, as for the Triton kernels."""

    def __init__(self, u: Tensor, lv: Levels) -> None:
        lib = library()
        if lib is None:
            raise RuntimeError("encoder.backend=cpu: the C kernels could not be built")
        self.lib, self.lv = lib, lv
        self.u = u.detach().contiguous().float()
        i64 = torch.int64
        # Kept as attributes: the C calls read their memory.
        self.consts = (
            lv.scale.float().contiguous(), lv.res.to(i64).contiguous(),
            lv.size.to(i64).contiguous(), lv.offset.to(i64).contiguous(),
        )  # fmt: skip
        self.shape = (lv.scale.shape[0], u.shape[0], lv.n_features)  # (L, N, F)

    def _call(self, name: str, *tensors: Tensor | None) -> None:
        """``name(u, *tensors, level constants, sizes, threads)``; the last tensors are the
        outputs, which the kernel fills."""
        n_levels, n, f = self.shape
        if n:
            getattr(self.lib, name)(
                _p(self.u), *(_p(t) for t in tensors), *(_p(t) for t in self.consts),
                self.lv.n_dense, n, n_levels, f, torch.get_num_threads(),
            )  # fmt: skip

    def encode(self, src: Tensor, direction: Tensor | None = None) -> Tensor:
        n_levels, n, f = self.shape
        out = self.u.new_empty(n, n_levels * f)
        self._call("hg_encode", src.detach().contiguous(), _dir(direction), out)
        return out

    def _table_like(self, src: Tensor) -> Tensor:
        # The kernels zero every level's rows before their scatter; with no point they do not run.
        return self.u.new_empty(src.shape) if self.shape[1] else self.u.new_zeros(src.shape)

    def source_grad(self, g_out: Tensor, src: Tensor, direction: Tensor | None = None) -> Tensor:
        g_table = self._table_like(src)
        self._call("hg_table_grad", None, _f32(g_out), _dir(direction), g_table, None)
        return g_table

    def input_grad(self, src: Tensor, g_out: Tensor) -> Tensor:
        g_u = torch.empty_like(self.u)
        self._call("hg_input_grad", src.detach().contiguous(), _f32(g_out), g_u)
        return g_u

    def direction_grads(
        self, g_out: Tensor, src: Tensor, direction: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(source_grad(g_out, src, direction), encode(src, direction))`` in one pass."""
        n_levels, n, f = self.shape
        g_table, g_gout = self._table_like(src), self.u.new_empty(n, n_levels * f)
        self._call("hg_table_grad", src.detach().contiguous(), _f32(g_out), _dir(direction),
                   g_table, g_gout)  # fmt: skip
        return g_table, g_gout


def _f32(t: Tensor) -> Tensor:
    return t.detach().contiguous().float()


def _dir(direction: Tensor | None) -> Tensor | None:
    return None if direction is None else _f32(direction)


def hash_encode(u: Tensor, table: Tensor, lv: Levels) -> Tensor:
    """The hash encoding of ``u`` (N, 3) in [0, 1] with ``table`` (T, F) on the CPU: (N, L·F),
    differentiable in ``u`` and ``table``, twice in ``table``."""
    return _autograd_encode(u, table, CpuCorners(u, lv))
