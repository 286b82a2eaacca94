"""Background outside the unit sphere: NeRF++'s inverted-sphere parameterisation."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from neurecon.encoders import FrequencyEncoder, SphericalHarmonicsEncoder
from neurecon.fields.base import DensityOutput
from neurecon.fields.mlp import TruncExp, mlp


class BackgroundField(nn.Module):
    """Density + colour for points with ``|x| >= 1``, seen as ``(x/|x|, 1/|x|)`` (bounded), so
    the unbounded outside fits a small network and never competes with the object's surface.

    Shapes: x (N, 3) with |x| >= 1, d (N, 3) → density (N,), colour (N, 3).
    """

    kind = "background"

    def __init__(
        self,
        n_freqs: int = 6,
        hidden_dim: int = 64,
        n_layers: int = 3,
        feature_dim: int = 32,
        dir_degree: int = 4,
    ) -> None:
        super().__init__()
        self.encoder = FrequencyEncoder(4, n_freqs)
        self.dir_encoder = SphericalHarmonicsEncoder(3, dir_degree)
        self.density_net = mlp(
            self.encoder.out_dim, hidden_dim, n_layers, 1 + feature_dim, nn.ReLU()
        )
        self.color_net = mlp(feature_dim + self.dir_encoder.out_dim, hidden_dim, 1, 3, nn.ReLU())
        self.act = TruncExp()

    def forward(self, x: Tensor, d: Tensor) -> DensityOutput:
        r = x.norm(dim=-1, keepdim=True).clamp_min(1.0)
        h = self.density_net(self.encoder(torch.cat([x / r, 1.0 / r], dim=-1)))
        color = self.color_net(torch.cat([h[:, 1:], self.dir_encoder(d)], dim=-1)).sigmoid()
        return DensityOutput(density=self.act(h[:, 0] - 1.0), color=color)
