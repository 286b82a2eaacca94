"""The hash encoding as three linear primitives, and one autograd for every backend.

For points ``u`` (N, 3) in [0, 1] the encoding is linear in the table:
``out[n, l] = Σ_c w_c(u_n) · table[idx_c(u_n)]`` over the 8 corners c of the point's cell at
level l. Its backward, and the double backward the eikonal term needs, are the same sums with
other weights, so a backend supplies three primitives for a batch of points (:class:`Corners`),
over a *source* of table values:

- ``encode(src, direction)``: the sum above, (N, L·F); with ``direction`` v (N, 3), the
  derivative of the encoding along v instead (weights ``Σ_a v_a ∂w_c/∂u_a``);
- ``source_grad(g_out, src, direction)``: its transpose, the gradient for ``src``;
- ``input_grad(src, g_out)``: ``∂L/∂u`` (N, 3);
- optionally ``direction_grads(g_out, src, direction)``: the double backward's
  ``source_grad(g_out, src, direction)`` and ``encode(src, direction)`` in one pass.

The Triton kernels (``hashgrid_triton.py``) take the table itself as the source and fuse the
gather and the scatter. :class:`TorchCorners` (tensor ops, any device) takes the table rows
already gathered per corner, (L, N, 8, F), by one ``index_select`` outside: autograd then sums
the rows' gradients from the loss and from the eikonal term's double backward and scatters them
into the table once. The C kernels (``hashgrid_cpu.py``) take the table, as Triton's do.

The autograd keeps the table's path and the input's path in separate nodes (:class:`_Encode`,
:class:`_InputPath`), so each backward pass runs only the primitives it needs: the eikonal
term's ``∂sdf/∂u`` runs ``input_grad`` alone, and the loss's backward for the parameters runs
one ``source_grad`` for the loss and the directional ``source_grad`` and ``encode`` for the
eikonal term. The encoding's second derivative in ``u`` is not propagated: sample positions are
not trained (tiny-cuda-nn does the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

PRIMES = (1, 2654435761, 805459861)  # tiny-cuda-nn's spatial hash, per axis


def safe_unit(u: Tensor) -> Tensor:
    """``u`` (N, 3) with NaN → 0 and everything clamped to [0, 1] (±inf, huge values), as the
    C and Triton kernels do inside: a NaN position must never become a table index (a diverging
    run produces them before the NaN guard acts). Identity on finite points in [0, 1]."""
    return torch.nan_to_num(u, nan=0.0, posinf=1.0, neginf=0.0).clamp(0.0, 1.0)


@dataclass(frozen=True)
class Levels:
    """Per-level grid constants, (L,) tensors on the encoder's device."""

    scale: Tensor  # float32: position scale
    res: Tensor  # int64: grid resolution (dense indexing)
    size: Tensor  # int64: table entries
    offset: Tensor  # int64: first entry in the shared table
    dense: Tensor  # int64: 1 where the level is indexed densely
    n_features: int
    n_dense: int  # how many levels, the coarsest, are dense (their table holds the grid)


class Corners(Protocol):
    """The encoding's primitives for one batch of points (see the module docstring)."""

    shape: tuple[int, int, int]  # (L, N, F)

    def encode(self, src: Tensor, direction: Tensor | None = None) -> Tensor: ...

    def source_grad(
        self, g_out: Tensor, src: Tensor, direction: Tensor | None = None
    ) -> Tensor: ...

    def input_grad(self, src: Tensor, g_out: Tensor) -> Tensor: ...


class TorchCorners:
    """The primitives in tensor ops for points ``u`` (N, 3) in [0, 1]; the source is the
    table's rows at every corner, ``table[idx].view(L, N, 8, F)``.

    The corner rows ``idx`` (L·N·8,) and the trilinear factors are computed once per batch and
    shared by the forward and both backwards; ``idx`` and ``w`` (L, N, 8) also serve the
    reference encoding in ``hashgrid.py``. Corner order: (x, y, z) bits nested as [x][y][z]
    (any order gives the same sums).
    """

    def __init__(self, u: Tensor, lv: Levels, track_input: bool = False) -> None:
        L, N = lv.scale.shape[0], u.shape[0]
        self.shape = (L, N, lv.n_features)  # (levels, points, features), every backend
        # track_input: the weights stay differentiable in u, for plain autograd (the reference)
        u = safe_unit(u)  # every backend sanitises its positions the same way
        pos = (u if track_input else u.detach())[None] * lv.scale[:, None, None] + 0.5
        base = pos.floor()
        frac = pos - base
        corner = base.long()[..., None] + torch.tensor([0, 1], device=u.device)  # (L, N, 3, 2)
        cx, cy, cz = corner.unbind(2)  # (L, N, 2) each: per axis, the two grid lines
        nd = lv.n_dense  # levels [0, nd) are indexed densely, the finer ones hashed
        r = lv.res[:nd, None, None]
        dense = cx[:nd, :, :, None, None] + (cy[:nd] * r)[..., None, :, None]
        dense = dense + (cz[:nd] * r * r)[..., None, None, :]  # (nd, N, 2, 2, 2)
        # tiny-cuda-nn wraps dense indices too: the upper corner of a point at u = 1 is one
        # past the grid.
        # Written in place into one buffer: each pass over the (L, N, 2, 2, 2) indices costs
        # about as much as the allocation of a fresh one on a CPU.
        idx = torch.empty((L, N, 2, 2, 2), dtype=torch.int64, device=u.device)
        torch.remainder(dense, lv.size[:nd].view(-1, 1, 1, 1, 1), out=idx[:nd])
        # The hash is uint32 arithmetic in tiny-cuda-nn; hashed tables are powers of two, and
        # the mask keeps only low bits, which int64 products share with uint32 ones.
        hx, hy, hz = cx[nd:] * PRIMES[0], cy[nd:] * PRIMES[1], cz[nd:] * PRIMES[2]
        hashed = idx[nd:]
        torch.bitwise_xor(hx[..., :, None, None] ^ hy[..., None, :, None],
                          hz[..., None, None, :], out=hashed)  # fmt: skip
        hashed.bitwise_and_((lv.size[nd:] - 1).view(-1, 1, 1, 1, 1))
        idx.add_(lv.offset.view(L, 1, 1, 1, 1))
        self.idx = idx.reshape(-1)
        self.axes = torch.stack([1 - frac, frac], -1).unbind(2)  # 3 × (L, N, 2)
        self.scale = lv.scale
        self.w = self._outer(*self.axes)
        self._dw: list[Tensor] | None = None

    def gather(self, table: Tensor) -> Tensor:
        """The source for ``table`` (T, F): its rows at every corner, (L, N, 8, F)."""
        return table.index_select(0, self.idx).view(*self.w.shape, table.shape[1])

    @staticmethod
    def _outer(wx: Tensor, wy: Tensor, wz: Tensor) -> Tensor:
        """(L, N, 2) per axis → (L, N, 8) products, in the corner order of ``idx``."""
        # Products of contiguous (L, N) planes, stacked: broadcasting over the trailing 2s
        # instead runs about 4x slower on a CPU (inner loops of length 2).
        xs, ys, zs = wx.unbind(-1), wy.unbind(-1), wz.unbind(-1)
        xy = [x * y for x in xs for y in ys]
        return torch.stack([p * z for p in xy for z in zs], -1)

    @property
    def dw(self) -> list[Tensor]:
        """∂w/∂u_a for a = x, y, z: 3 × (L, N, 8), the level's scale included."""
        if self._dw is None:
            slope = torch.tensor([-1.0, 1.0], device=self.scale.device) * self.scale[:, None]
            slope = slope[:, None, :].expand_as(self.axes[0])  # (L, N, 2)
            wx, wy, wz = self.axes
            self._dw = [
                self._outer(slope, wy, wz),
                self._outer(wx, slope, wz),
                self._outer(wx, wy, slope),
            ]
        return self._dw

    def _weights(self, direction: Tensor | None) -> Tensor:
        if direction is None:
            return self.w
        v = direction.detach().t()[:, None, :, None]  # (3, 1, N, 1)
        dx, dy, dz = self.dw
        return v[0] * dx + v[1] * dy + v[2] * dz

    def _g(self, g_out: Tensor) -> Tensor:
        L, N, F = self.shape
        return g_out.reshape(N, L, F).transpose(0, 1)  # (L, N, F)

    def encode(self, src: Tensor, direction: Tensor | None = None) -> Tensor:
        L, N, F = self.shape
        return torch.einsum("lnc,lncf->nlf", self._weights(direction), src).reshape(N, L * F)

    def source_grad(self, g_out: Tensor, src: Tensor, direction: Tensor | None = None) -> Tensor:
        return self._weights(direction)[..., None] * self._g(g_out)[:, :, None, :]

    def input_grad(self, src: Tensor, g_out: Tensor) -> Tensor:
        dot = torch.einsum("lncf,lnf->lnc", src, self._g(g_out))  # (L, N, 8)
        return torch.stack([(d * dot).sum((0, 2)) for d in self.dw], -1)


class _Encode(torch.autograd.Function):
    """The encoding as a function of the source, at fixed points: ``out = A_u · src``."""

    @staticmethod
    def forward(ctx, src: Tensor, corners: Corners) -> Tensor:
        ctx.save_for_backward(src)
        ctx.corners = corners
        return corners.encode(src)

    @staticmethod
    def backward(ctx, g_out: Tensor):
        (src,) = ctx.saved_tensors
        return _SourceGrad.apply(g_out, src, ctx.corners), None


class _SourceGrad(torch.autograd.Function):
    """g_out → ∂L/∂src = A_uᵀ · g_out (the scatter into the table); linear in g_out."""

    @staticmethod
    def forward(ctx, g_out: Tensor, src: Tensor, corners: Corners) -> Tensor:
        ctx.corners = corners
        return corners.source_grad(g_out.contiguous().float(), src)

    @staticmethod
    def backward(ctx, gg_src: Tensor):
        return ctx.corners.encode(gg_src) if ctx.needs_input_grad[0] else None, None, None


class _InputPath(torch.autograd.Function):
    """A zero (N, L·F) whose gradient carries ``∂out/∂u``, added to :class:`_Encode`'s output.

    The engine runs a node's backward whole, so the two paths are two nodes: the eikonal term's
    gradient in ``u`` alone then skips the table's scatter, and the loss's gradient for the
    parameters alone (``backward(inputs=...)``) skips ``u``'s. The source reaches this node
    outside autograd's view (``srcs``), so its only edge is ``u``; it enters the graph again
    through :class:`_InputGrad`, which the double backward differentiates.
    """

    @staticmethod
    def forward(ctx, u: Tensor, corners: Corners, srcs: tuple[Tensor]) -> Tensor:
        ctx.corners, ctx.srcs = corners, srcs
        L, F = corners.shape[0], corners.shape[2]
        return u.new_zeros(u.shape[0], L * F)

    @staticmethod
    def backward(ctx, g_out: Tensor):
        return _InputGrad.apply(ctx.srcs[0], g_out, ctx.corners), None, None


class _InputGrad(torch.autograd.Function):
    """(src, g_out) → ∂L/∂u (N, 3); differentiable in ``src`` and ``g_out``."""

    @staticmethod
    def forward(ctx, src: Tensor, g_out: Tensor, corners: Corners) -> Tensor:
        g_out = g_out.contiguous().float()
        ctx.save_for_backward(src, g_out)
        ctx.corners = corners
        return corners.input_grad(src, g_out)

    @staticmethod
    def backward(ctx, gg_u: Tensor):
        src, g_out = ctx.saved_tensors
        corners = ctx.corners
        g_src = g_gout = None
        if all(ctx.needs_input_grad[:2]) and hasattr(corners, "direction_grads"):
            return (*corners.direction_grads(g_out, src, gg_u), None)  # both sums in one pass
        if ctx.needs_input_grad[0]:  # ∂(∂L/∂u)/∂src along gg_u
            g_src = corners.source_grad(g_out, src, direction=gg_u)
        if ctx.needs_input_grad[1]:  # ∂(∂L/∂u)/∂g_out along gg_u
            g_gout = corners.encode(src, direction=gg_u)
        return g_src, g_gout, None


def hash_encode(u: Tensor, src: Tensor, corners: Corners) -> Tensor:
    """The encoding of ``u`` (N, 3) from the source ``src`` (the table, or the rows
    ``corners`` reads) at the points ``corners`` was built for: (N, L·F), differentiable in
    ``u`` and ``src``, twice in ``src``."""
    out = _Encode.apply(src, corners)
    if u.requires_grad and torch.is_grad_enabled():
        out = out + _InputPath.apply(u, corners, (src,))
    return out
