"""Triton kernels for the multiresolution hash encoding (``encoder.backend=triton``).

Same layout and hash as the PyTorch backend (tiny-cuda-nn's conventions, see ``hashgrid.py``),
so the two share one parameter table and are tested against each other. Three kernels:

- ``_encode_kernel``: ``out[n, l, :] = Σ_c w_c(u_n) · table[idx_c(u_n)]`` over the 8 corners c
  of the point's cell at level l — with the trilinear weights ``w_c``, or (``HAS_DIR``) with their
  derivative along a direction ``v_n``: ``Σ_a v_na ∂w_c/∂u_a``;
- ``_table_grad_kernel``: the transpose, scattering ``g_out · w_c`` (or the directional weights)
  into the table's gradient with atomic adds;
- ``_input_grad_kernel``: ``∂L/∂u_a = Σ_l Σ_c (∂w_c/∂u_a) · <g_out[n, l], table[idx_c]>``.

They are the three primitives of ``hashgrid_ops.py`` (:class:`TritonCorners`), whose autograd
(shared with the torch backend) gives the backward and the double backward the eikonal term
needs with ``field.gradient=analytic``.

Runs on CUDA; on a CPU only under Triton's interpreter (``TRITON_INTERPRET=1``, for tests).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from neurecon.encoders.hashgrid_ops import PRIMES, Levels
from neurecon.encoders.hashgrid_ops import hash_encode as _autograd_encode

try:
    import triton
    import triton.language as tl
except ImportError:  # optional: the torch backend covers every device
    triton = None

BLOCK = 128
_P1, _P2 = PRIMES[1:]  # tiny-cuda-nn's primes for y and z (x: 1)


def triton_available() -> bool:
    """Triton is installed and CUDA is present (what ``encoder.backend=auto`` asks)."""
    return triton is not None and torch.cuda.is_available()


def interpreting() -> bool:
    """Triton's interpreter is on: kernels run on CPU tensors (slowly; for tests). Triton reads
    the variable when a kernel is defined, so it must be set before neurecon is imported."""
    return triton is not None and os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:

    @triton.jit
    def _level(scale_ptr, res_ptr, size_ptr, offset_ptr, dense_ptr, lvl):
        """One level's constants: position scale, resolution, table size and offset, dense."""
        scale = tl.load(scale_ptr + lvl)
        res, size = tl.load(res_ptr + lvl), tl.load(size_ptr + lvl)
        offset, dense = tl.load(offset_ptr + lvl), tl.load(dense_ptr + lvl)
        return scale, res, size, offset, dense

    @triton.jit
    def _unit(x):
        """NaN → 0, then clamped to [0, 1] (±inf, huge values): as hashgrid_ops.safe_unit.
        A NaN cast to int64 would index outside the table."""
        x = tl.where(x == x, x, 0.0)
        return tl.minimum(tl.maximum(x, 0.0), 1.0)

    @triton.jit
    def _cell(u_ptr, n, mask, scale):
        """Grid position of points ``n`` at one level: integer base corner and fraction."""
        px = _unit(tl.load(u_ptr + n * 3 + 0, mask=mask, other=0.0)) * scale + 0.5
        py = _unit(tl.load(u_ptr + n * 3 + 1, mask=mask, other=0.0)) * scale + 0.5
        pz = _unit(tl.load(u_ptr + n * 3 + 2, mask=mask, other=0.0)) * scale + 0.5
        fx, fy, fz = tl.floor(px), tl.floor(py), tl.floor(pz)
        bx, by, bz = fx.to(tl.int64), fy.to(tl.int64), fz.to(tl.int64)
        return bx, by, bz, px - fx, py - fy, pz - fz

    @triton.jit
    def _corner_index(bx, by, bz, c: tl.constexpr, res, size, offset, dense, p1, p2):
        """Table row of corner ``c`` (bits: x, y, z) of the cells at ``(bx, by, bz)``."""
        cx = bx + (c & 1)
        cy = by + ((c >> 1) & 1)
        cz = bz + ((c >> 2) & 1)
        dense_idx = cx + cy * res + cz * res * res
        m = 0xFFFFFFFF  # uint32 arithmetic, as tiny-cuda-nn
        hashed = (cx & m) ^ ((cy * p1) & m) ^ ((cz * p2) & m)
        idx = tl.where(dense != 0, dense_idx, hashed)
        return idx % size + offset

    @triton.jit
    def _corner_weights(fx, fy, fz, c: tl.constexpr):
        """Trilinear weight of corner ``c`` and its per-axis factors and their slopes (±1)."""
        wx = fx if (c & 1) else 1.0 - fx
        wy = fy if ((c >> 1) & 1) else 1.0 - fy
        wz = fz if ((c >> 2) & 1) else 1.0 - fz
        sx = 1.0 if (c & 1) else -1.0
        sy = 1.0 if ((c >> 1) & 1) else -1.0
        sz = 1.0 if ((c >> 2) & 1) else -1.0
        return wx, wy, wz, sx, sy, sz

    @triton.jit
    def _weight(fx, fy, fz, scale, dir_ptr, n, mask, c: tl.constexpr, HAS_DIR: tl.constexpr):
        wx, wy, wz, sx, sy, sz = _corner_weights(fx, fy, fz, c)
        if HAS_DIR:  # derivative of the weight along the direction v_n (double backward)
            vx = tl.load(dir_ptr + n * 3 + 0, mask=mask, other=0.0)
            vy = tl.load(dir_ptr + n * 3 + 1, mask=mask, other=0.0)
            vz = tl.load(dir_ptr + n * 3 + 2, mask=mask, other=0.0)
            w = scale * (vx * sx * wy * wz + vy * wx * sy * wz + vz * wx * wy * sz)
        else:
            w = wx * wy * wz
        return w

    @triton.jit
    def _encode_kernel(
        u_ptr, table_ptr, dir_ptr, out_ptr, scale_ptr, res_ptr, size_ptr, offset_ptr,
        dense_ptr, N, L, p1, p2,
        F: tl.constexpr, HAS_DIR: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        pid, lvl = tl.program_id(0), tl.program_id(1)
        n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        mask = n < N
        f = tl.arange(0, F)
        scale, res, size, offset, dense = _level(scale_ptr, res_ptr, size_ptr, offset_ptr,
                                                 dense_ptr, lvl)  # fmt: skip
        bx, by, bz, fx, fy, fz = _cell(u_ptr, n, mask, scale)
        acc = tl.zeros((BLOCK_N, F), dtype=tl.float32)
        for c in tl.static_range(8):
            idx = _corner_index(bx, by, bz, c, res, size, offset, dense, p1, p2)
            w = _weight(fx, fy, fz, scale, dir_ptr, n, mask, c, HAS_DIR)
            row = tl.load(table_ptr + idx[:, None] * F + f[None, :], mask=mask[:, None], other=0.0)
            acc += w[:, None] * row
        out = out_ptr + n[:, None] * (L * F) + lvl * F + f[None, :]
        tl.store(out, acc, mask=mask[:, None])

    @triton.jit
    def _table_grad_kernel(
        u_ptr, g_out_ptr, dir_ptr, g_table_ptr, scale_ptr, res_ptr, size_ptr, offset_ptr,
        dense_ptr, N, L, p1, p2,
        F: tl.constexpr, HAS_DIR: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        pid, lvl = tl.program_id(0), tl.program_id(1)
        n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        mask = n < N
        f = tl.arange(0, F)
        scale, res, size, offset, dense = _level(scale_ptr, res_ptr, size_ptr, offset_ptr,
                                                 dense_ptr, lvl)  # fmt: skip
        bx, by, bz, fx, fy, fz = _cell(u_ptr, n, mask, scale)
        g_ptrs = g_out_ptr + n[:, None] * (L * F) + lvl * F + f[None, :]
        g = tl.load(g_ptrs, mask=mask[:, None], other=0.0)
        for c in tl.static_range(8):
            idx = _corner_index(bx, by, bz, c, res, size, offset, dense, p1, p2)
            w = _weight(fx, fy, fz, scale, dir_ptr, n, mask, c, HAS_DIR)
            dst = g_table_ptr + idx[:, None] * F + f[None, :]
            tl.atomic_add(dst, w[:, None] * g, mask=mask[:, None])

    @triton.jit
    def _input_grad_kernel(
        u_ptr, table_ptr, g_out_ptr, g_u_ptr, scale_ptr, res_ptr, size_ptr, offset_ptr,
        dense_ptr, N, L, p1, p2,
        F: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0)
        n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        mask = n < N
        f = tl.arange(0, F)
        gx = tl.zeros((BLOCK_N,), dtype=tl.float32)
        gy = tl.zeros((BLOCK_N,), dtype=tl.float32)
        gz = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for lvl in range(L):
            scale, res, size, offset, dense = _level(scale_ptr, res_ptr, size_ptr, offset_ptr,
                                                     dense_ptr, lvl)  # fmt: skip
            bx, by, bz, fx, fy, fz = _cell(u_ptr, n, mask, scale)
            g_ptrs = g_out_ptr + n[:, None] * (L * F) + lvl * F + f[None, :]
            g = tl.load(g_ptrs, mask=mask[:, None], other=0.0)
            for c in tl.static_range(8):
                idx = _corner_index(bx, by, bz, c, res, size, offset, dense, p1, p2)
                row_ptrs = table_ptr + idx[:, None] * F + f[None, :]
                row = tl.load(row_ptrs, mask=mask[:, None], other=0.0)
                dot = tl.sum(row * g, axis=1)  # <g_out[n, l], table[idx_c]>
                wx, wy, wz, sx, sy, sz = _corner_weights(fx, fy, fz, c)
                gx += scale * sx * wy * wz * dot
                gy += scale * wx * sy * wz * dot
                gz += scale * wx * wy * sz * dot
        tl.store(g_u_ptr + n * 3 + 0, gx, mask=mask)
        tl.store(g_u_ptr + n * 3 + 1, gy, mask=mask)
        tl.store(g_u_ptr + n * 3 + 2, gz, mask=mask)


def _level_args(lv: Levels) -> tuple:
    return lv.scale, lv.res, lv.size, lv.offset, lv.dense


def _encode(u: Tensor, table: Tensor, lv: Levels, direction: Tensor | None = None) -> Tensor:
    """(N, 3) in [0, 1], table (T, F) → (N, L·F); with ``direction`` (N, 3), the derivative of
    the encoding along it instead."""
    n, n_levels, f = u.shape[0], lv.scale.shape[0], lv.n_features
    out = u.new_empty(n, n_levels * f)
    if n == 0:
        return out
    d = direction.contiguous() if direction is not None else u
    grid = (triton.cdiv(n, BLOCK), n_levels)
    _encode_kernel[grid](
        u, table.contiguous(), d, out, *_level_args(lv), n, n_levels, _P1, _P2,
        F=f, HAS_DIR=direction is not None, BLOCK_N=BLOCK,
    )  # fmt: skip
    return out


def _table_grad(
    u: Tensor, g_out: Tensor, lv: Levels, rows: int, direction: Tensor | None = None
) -> Tensor:
    """The table's gradient (rows, F) from ``g_out`` (N, L·F): the transpose of ``_encode``."""
    n, n_levels, f = u.shape[0], lv.scale.shape[0], lv.n_features
    g_table = torch.zeros(rows, f, device=u.device, dtype=torch.float32)
    if n == 0:
        return g_table
    d = direction.contiguous() if direction is not None else u
    grid = (triton.cdiv(n, BLOCK), n_levels)
    _table_grad_kernel[grid](
        u, g_out.contiguous(), d, g_table, *_level_args(lv), n, n_levels, _P1, _P2,
        F=f, HAS_DIR=direction is not None, BLOCK_N=BLOCK,
    )  # fmt: skip
    return g_table


def _input_grad(u: Tensor, table: Tensor, g_out: Tensor, lv: Levels) -> Tensor:
    """∂L/∂u (N, 3) from ``g_out`` (N, L·F)."""
    n, n_levels, f = u.shape[0], lv.scale.shape[0], lv.n_features
    g_u = torch.zeros_like(u)
    if n == 0:
        return g_u
    _input_grad_kernel[(triton.cdiv(n, BLOCK),)](
        u, table.contiguous(), g_out.contiguous(), g_u, *_level_args(lv), n, n_levels, _P1, _P2,
        F=f, BLOCK_N=BLOCK,
    )  # fmt: skip
    return g_u


class TritonCorners:
    """The three primitives of ``hashgrid_ops`` as kernel launches, for points ``u`` (N, 3);
    the source is the table (T, F) itself."""

    def __init__(self, u: Tensor, lv: Levels) -> None:
        self.u, self.lv = u.detach().contiguous().float(), lv
        self.shape = (lv.scale.shape[0], u.shape[0], lv.n_features)  # (L, N, F)

    def encode(self, src: Tensor, direction: Tensor | None = None) -> Tensor:
        return _encode(self.u, src, self.lv, direction)

    def source_grad(self, g_out: Tensor, src: Tensor, direction: Tensor | None = None) -> Tensor:
        return _table_grad(self.u, g_out, self.lv, src.shape[0], direction)

    def input_grad(self, src: Tensor, g_out: Tensor) -> Tensor:
        return _input_grad(self.u, src, g_out, self.lv)


def hash_encode(u: Tensor, table: Tensor, lv: Levels) -> Tensor:
    """The hash encoding of ``u`` (N, 3) in [0, 1] with ``table`` (T, F): (N, L·F), float32."""
    if triton is None:
        raise RuntimeError("encoder.backend=triton needs the triton package")
    return _autograd_encode(u, table, TritonCorners(u, lv))
