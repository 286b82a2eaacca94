"""NeRF field: volume density + view-dependent colour."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from neurecon.errors import ConfigError
from neurecon.fields.base import BACKGROUND_MODES, DensityOutput, split_parameters
from neurecon.fields.mlp import TruncExp, mlp


class NeRFField(nn.Module):
    """Density MLP on encoded positions, colour MLP on geometry features and view direction.

    Args:
        encoder / dir_encoder: position / direction encodings.
        hidden_dim, n_layers, feature_dim, color_hidden_dim, color_layers: MLP sizes.
        density_bias: added before the exp activation (negative: start near-empty).
        mesh_density: density iso-level used for mesh extraction.
        background_model / background_net: as for :class:`~neurecon.fields.NeuSField`.
    """

    kind = "density"

    def __init__(
        self,
        encoder: nn.Module,
        dir_encoder: nn.Module,
        hidden_dim: int = 64,
        n_layers: int = 3,
        feature_dim: int = 32,
        color_hidden_dim: int = 64,
        color_layers: int = 2,
        density_bias: float = -1.0,
        mesh_density: float = 10.0,
        background_model: str = "auto",
        background_net: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.encoder, self.dir_encoder = encoder, dir_encoder
        self.density_net = mlp(encoder.out_dim, hidden_dim, n_layers, 1 + feature_dim, nn.ReLU())
        self.color_net = mlp(
            feature_dim + dir_encoder.out_dim, color_hidden_dim, color_layers, 3, nn.ReLU()
        )
        self.act = TruncExp()
        self.density_bias, self.mesh_density = density_bias, mesh_density
        if background_model not in BACKGROUND_MODES:
            raise ConfigError(
                f"field.background_model={background_model!r}; choose from {BACKGROUND_MODES}"
            )
        self.background_net = background_net

    def _density_feat(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.density_net(self.encoder(x))
        return self.act(h[:, 0] + self.density_bias), h[:, 1:]

    def density(self, x: Tensor) -> Tensor:
        """(N, 3) → (N,) non-negative density."""
        return self._density_feat(x)[0]

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return split_parameters(self)

    def stats(self) -> dict[str, float]:
        return {}

    def geometry(self, x: Tensor) -> Tensor:
        """Negative inside (density above ``mesh_density``), zero on that iso-surface."""
        return self.mesh_density - self.density(x)

    def forward(self, x: Tensor, d: Tensor, create_graph: bool = True) -> DensityOutput:
        sigma, feat = self._density_feat(x)
        color = torch.sigmoid(self.color_net(torch.cat([feat, self.dir_encoder(d)], dim=-1)))
        return DensityOutput(density=sigma, color=color)
