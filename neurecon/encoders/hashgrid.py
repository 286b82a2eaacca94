"""Multiresolution hash encoding (Instant-NGP), in pure PyTorch, vectorised across levels."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from neurecon.errors import ConfigError

_PRIMES = (1, 2654435761, 805459861)
# The 8 corners of a voxel as (8, 3) offsets.
_CORNERS = torch.tensor([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)])


class HashGridEncoder(nn.Module):
    """Trilinearly interpolated feature grids at ``n_levels`` resolutions.

    Coarse levels whose grid fits in the table are indexed densely (no collisions); finer levels
    use the spatial hash of Müller et al. 2022. All levels share one parameter tensor and are
    gathered in one call, so the cost does not grow with a Python loop over levels.

    Args:
        in_dim: must be 3.   bound: inputs lie in ``[-bound, bound]^3``.
        n_levels, n_features: levels and features per level.
        log2_table_size: entries per level (at most).
        base_resolution, max_resolution: grid resolution of the coarsest / finest level.
        include_input: prepend the raw input (lets an SDF MLP keep a geometric init).
    Shapes: (N, 3) → (N, out_dim), ``out_dim = n_levels * n_features (+ 3)``.
    """

    def __init__(
        self,
        in_dim: int = 3,
        bound: float = 1.0,
        n_levels: int = 16,
        n_features: int = 2,
        log2_table_size: int = 19,
        base_resolution: int = 16,
        max_resolution: int = 2048,
        include_input: bool = True,
        backend: str = "torch",
    ) -> None:
        super().__init__()
        if in_dim != 3:
            raise ConfigError("encoder: the hash grid encodes 3-D positions (in_dim=3)")
        if backend != "torch":
            raise ConfigError(f"encoder.backend={backend!r} is unknown; available: 'torch'")
        if n_levels < 1 or n_features < 1 or base_resolution < 2:
            raise ConfigError("encoder: need n_levels >= 1, n_features >= 1, base_resolution >= 2")
        self.in_dim, self.bound, self.include_input = in_dim, bound, include_input
        self.n_levels, self.n_features = n_levels, n_features
        growth = (
            math.exp((math.log(max_resolution) - math.log(base_resolution)) / (n_levels - 1))
            if n_levels > 1
            else 1.0
        )
        table = 2**log2_table_size
        res, sizes, dense = [], [], []
        for lvl in range(n_levels):
            r = math.floor(base_resolution * growth**lvl)
            n_dense = (r + 1) ** 3
            res.append(r)
            sizes.append(min(table, n_dense))
            dense.append(n_dense <= table)
        offsets = [0]
        for s in sizes:
            offsets.append(offsets[-1] + s)
        self.register_buffer("res", torch.tensor(res, dtype=torch.float32), persistent=False)
        self.register_buffer("sizes", torch.tensor(sizes), persistent=False)
        self.register_buffer("offsets", torch.tensor(offsets[:-1]), persistent=False)
        self.register_buffer("dense", torch.tensor(dense), persistent=False)
        self.register_buffer("primes", torch.tensor(_PRIMES), persistent=False)
        self.register_buffer("corners", _CORNERS.clone(), persistent=False)
        self.embeddings = nn.Parameter(torch.empty(offsets[-1], n_features).uniform_(-1e-4, 1e-4))
        self.out_dim = n_levels * n_features + (in_dim if include_input else 0)

    def forward(self, x: Tensor) -> Tensor:
        u = ((x + self.bound) / (2 * self.bound)).clamp(0.0, 1.0)  # (N, 3) in [0, 1]
        pos = u[None] * self.res[:, None, None]  # (L, N, 3)
        base = pos.floor().long().clamp_max(self.res.long()[:, None, None] - 1)
        frac = pos - base  # (L, N, 3)
        idx = base[:, :, None, :] + self.corners  # (L, N, 8, 3)
        # Dense index for coarse levels, XOR hash for fine ones.
        stride = (self.res.long() + 1)[:, None, None]
        dense_idx = idx[..., 0] + idx[..., 1] * stride + idx[..., 2] * stride * stride
        hashed = (idx[..., 0] * self.primes[0]) ^ (idx[..., 1] * self.primes[1])
        hashed = hashed ^ (idx[..., 2] * self.primes[2])
        flat = torch.where(self.dense[:, None, None], dense_idx, hashed)
        flat = flat % self.sizes[:, None, None] + self.offsets[:, None, None]
        feats = self.embeddings[flat]  # (L, N, 8, F)
        w = torch.where(self.corners.bool(), frac[:, :, None, :], 1 - frac[:, :, None, :])
        out = (feats * w.prod(-1, keepdim=True)).sum(2)  # (L, N, F)
        out = out.permute(1, 0, 2).reshape(x.shape[0], -1)
        return torch.cat([x, out], dim=-1) if self.include_input else out
