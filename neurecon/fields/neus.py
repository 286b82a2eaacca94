"""NeuS field: SDF MLP with geometric init, a colour MLP, and a learned variance ``inv_s``."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from neurecon.errors import ConfigError
from neurecon.fields.base import BACKGROUND_MODES, SDFOutput, split_parameters
from neurecon.fields.gradients import central_difference, stencil
from neurecon.fields.mlp import mlp

GRADIENT_MODES = ("analytic", "finite_difference")


class NeuSField(nn.Module):
    """Signed distance + view-dependent colour (Wang et al. 2021, IDR-style colour network).

    Args:
        encoder: position encoding whose output starts with the raw ``x`` (``include_input``);
            the geometric init relies on it.
        dir_encoder: view-direction encoding.
        hidden_dim, n_layers: SDF MLP width and number of hidden layers.
        feature_dim: geometry features passed to the colour MLP.
        color_hidden_dim, color_layers: colour MLP size.
        geometric_init / init_radius: start as the SDF of a sphere of that radius.
        beta: softplus sharpness (100 as in NeuS; smooth second derivatives for the eikonal term).
        variance_init: ``inv_s = exp(10 * variance_init)`` at the start (0.3 → ~20).
        weight_norm: weight-normalised linear layers as in NeuS.
        background_model: ``auto`` (a background field when the scene has no masks; decided by
            ``neurecon.build``), ``none`` or ``nerfpp``.   background_net: that field, or None.
        gradient: how the SDF gradient (normals, NeuS's cosine, the eikonal term) is computed:
            ``analytic`` (autograd; the eikonal term then needs a double backward) or
            ``finite_difference`` (central differences with step ``fd_eps``, as instant-nsr-pl
            and Neuralangelo do: six more SDF evaluations, a plain backward).
        fd_eps: the step; None: the encoder's finest cell (``finest_cell``, a hash grid's), or
            1e-3 for encoders without cells.
    """

    kind = "sdf"

    def __init__(
        self,
        encoder: nn.Module,
        dir_encoder: nn.Module,
        hidden_dim: int = 64,
        n_layers: int = 3,
        feature_dim: int = 32,
        color_hidden_dim: int = 64,
        color_layers: int = 2,
        geometric_init: bool = True,
        init_radius: float = 0.5,
        beta: float = 100.0,
        variance_init: float = 0.3,
        weight_norm: bool = True,
        background_model: str = "auto",
        background_net: nn.Module | None = None,
        gradient: str = "analytic",
        fd_eps: float | None = None,
    ) -> None:
        super().__init__()
        if geometric_init and not getattr(encoder, "include_input", False):
            raise ConfigError("field.geometric_init needs an encoder with include_input=true")
        if not math.isfinite(variance_init):
            raise ConfigError(f"field.variance_init must be finite, got {variance_init}")
        self.encoder, self.dir_encoder = encoder, dir_encoder
        self.feature_dim = feature_dim
        self.sdf_net = mlp(
            encoder.out_dim, hidden_dim, n_layers, 1 + feature_dim, nn.Softplus(beta)
        )
        if geometric_init:
            self._geometric_init(init_radius, encoder.in_dim)
        color_in = 3 + 3 + dir_encoder.out_dim + feature_dim  # x, normal, dir, features
        self.color_net = mlp(color_in, color_hidden_dim, color_layers, 3, nn.ReLU())
        if weight_norm:
            for m in [*self.sdf_net, *self.color_net]:
                if isinstance(m, nn.Linear):
                    nn.utils.parametrizations.weight_norm(m)
        self.variance = nn.Parameter(torch.tensor(float(variance_init)))
        if background_model not in BACKGROUND_MODES:
            raise ConfigError(
                f"field.background_model={background_model!r}; choose from {BACKGROUND_MODES}"
            )
        self.background_net = background_net
        if gradient not in GRADIENT_MODES:
            raise ConfigError(f"field.gradient={gradient!r}; choose from {GRADIENT_MODES}")
        self.gradient = gradient
        if fd_eps is not None and not fd_eps > 0:
            raise ConfigError(f"field.fd_eps must be > 0, got {fd_eps}")
        self._fd_eps = fd_eps

    def _geometric_init(self, radius: float, in_raw: int) -> None:
        """IDR/NeuS init: the network starts as ``|x| - radius`` (negative inside)."""
        linears = [m for m in self.sdf_net if isinstance(m, nn.Linear)]
        for i, lin in enumerate(linears):
            out_dim, in_dim = lin.weight.shape
            if i == len(linears) - 1:
                nn.init.normal_(lin.weight, mean=np.sqrt(np.pi) / np.sqrt(in_dim), std=1e-4)
                nn.init.constant_(lin.bias, -radius)
            else:
                nn.init.constant_(lin.bias, 0.0)
                nn.init.normal_(lin.weight, 0.0, np.sqrt(2) / np.sqrt(out_dim))
                if i == 0:  # encoded channels start at zero so the init is exactly a sphere
                    nn.init.constant_(lin.weight[:, in_raw:], 0.0)

    @property
    def fd_eps(self) -> float:
        """The finite-difference step: ``field.fd_eps``, else the encoder's finest active cell
        (a hash grid's; it shrinks as a coarse-to-fine schedule adds levels), else 1e-3."""
        return float(self._fd_eps or getattr(self.encoder, "finest_cell", None) or 1e-3)

    def inv_s(self) -> Tensor:
        """Scalar inverse standard deviation of the logistic density."""
        return torch.exp(self.variance * 10.0)

    def _sdf_feat(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.sdf_net(self.encoder(x))
        return h[:, 0], h[:, 1:]

    def _sdf_feat_fd(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """SDF (N,), features (N, F) and the central-difference gradient (N, 3) at ``x``
        (N, 3), from one batched pass over ``x`` and its six ``±fd_eps`` neighbours."""
        h = self.sdf_net(self.encoder(stencil(x, self.fd_eps)))
        n = x.shape[0]
        return h[:n, 0], h[:n, 1:], central_difference(h[:, 0], self.fd_eps)

    def sdf(self, x: Tensor) -> Tensor:
        """(N, 3) → (N,) signed distance, negative inside."""
        return self._sdf_feat(x)[0]

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return split_parameters(self)

    def stats(self) -> dict[str, float]:
        """``inv_s``: the sharpness of the SDF → density mapping (rises as training goes)."""
        return {"inv_s": float(self.inv_s().detach().clamp(1e-6, 1e6))}

    def geometry(self, x: Tensor) -> Tensor:
        """Signed scalar for mesh extraction: negative inside, zero on the surface."""
        return self.sdf(x)

    def forward(self, x: Tensor, d: Tensor, create_graph: bool = True) -> SDFOutput:
        """SDF, its spatial gradient and colour at points ``x`` (N, 3) seen along ``d`` (N, 3).

        ``create_graph`` keeps the gradient differentiable (training: eikonal loss, normals in the
        colour net); validation passes False to free the graph per chunk.
        """
        if self.gradient == "finite_difference":
            with torch.set_grad_enabled(create_graph and torch.is_grad_enabled()):
                x = x.detach()
                sdf, feat, grad = self._sdf_feat_fd(x)
        else:
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)
                sdf, feat = self._sdf_feat(x)
                (grad,) = torch.autograd.grad(sdf.sum(), x, create_graph=create_graph)
        if not create_graph:
            sdf, feat, grad = sdf.detach(), feat.detach(), grad.detach()
        h = torch.cat([x.detach(), grad, self.dir_encoder(d), feat], dim=-1)
        color = torch.sigmoid(self.color_net(h))
        return SDFOutput(sdf=sdf, gradient=grad, color=color)
