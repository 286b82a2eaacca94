"""NeRF positional (frequency) encoding."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from neurecon.errors import ConfigError


class FrequencyEncoder(nn.Module):
    """``[x, sin(2^k x), cos(2^k x)]`` for k < ``n_freqs``.

    Args:
        in_dim: input channels.  n_freqs: number of octaves.  include_input: prepend ``x``.
    Shapes: (N, in_dim) → (N, out_dim) with ``out_dim = in_dim * (include_input + 2 n_freqs)``.
    """

    def __init__(self, in_dim: int = 3, n_freqs: int = 6, include_input: bool = True) -> None:
        super().__init__()
        if n_freqs < 0:
            raise ConfigError(f"encoder.n_freqs must be >= 0, got {n_freqs}")
        self.in_dim, self.n_freqs, self.include_input = in_dim, n_freqs, include_input
        self.register_buffer("freqs", 2.0 ** torch.arange(n_freqs), persistent=False)
        self.out_dim = in_dim * (int(include_input) + 2 * n_freqs)

    def forward(self, x: Tensor) -> Tensor:
        xf = (x[..., None, :] * self.freqs[:, None]).flatten(-2)  # (N, F * in_dim)
        parts = [x] if self.include_input else []
        return torch.cat([*parts, torch.sin(xf), torch.cos(xf)], dim=-1)
