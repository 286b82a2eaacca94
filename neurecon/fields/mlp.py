"""A small MLP used by the fields."""

from __future__ import annotations

from torch import Tensor, nn


def mlp(
    in_dim: int, hidden: int, n_hidden_layers: int, out_dim: int, act: nn.Module
) -> nn.Sequential:
    """``n_hidden_layers`` hidden layers of width ``hidden``; no activation after the last."""
    layers: list[nn.Module] = []
    d = in_dim
    for _ in range(n_hidden_layers):
        layers += [nn.Linear(d, hidden), act]
        d = hidden
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


class TruncExp(nn.Module):
    """exp with the input clamped for the backward pass (Instant-NGP's density activation)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.clamp(max=15.0).exp()
