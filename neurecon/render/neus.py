"""NeuS renderer: hierarchical up-sampling and unbiased SDF-to-alpha (Wang et al. 2021).

Read top to bottom like Totoro97/NeuS ``models/renderer.py``: clip rays to the unit sphere, place
uniform samples, repeatedly add samples where the (fixed-``s``) NeuS weights are large, then
evaluate the field with gradients and composite.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from neurecon.errors import ConfigError
from neurecon.render.common import (
    RenderOutput,
    SphereRenderer,
    render_weights_from_alpha,
    sample_pdf,
    stratified,
)


def _neus_alpha(sdf_prev: Tensor, sdf_next: Tensor, inv_s: Tensor | float) -> Tensor:
    """Discrete opacity between two SDF values (eq. 13 of NeuS)."""
    prev_cdf = torch.sigmoid(sdf_prev * inv_s)
    next_cdf = torch.sigmoid(sdf_next * inv_s)
    return ((prev_cdf - next_cdf + 1e-5) / (prev_cdf + 1e-5)).clamp(0.0, 1.0)


class NeuSRenderer(SphereRenderer):
    """Volume rendering of an SDF field.

    Args:
        n_samples: uniform samples per ray.  n_importance: extra samples added by up-sampling.
        up_sample_steps: rounds of up-sampling (sharpness 64·2^i as in NeuS).
        perturb: jitter uniform samples during training.
        anneal_end: steps over which the cos-anneal ratio goes 0 → 1 (0: no annealing).
        background: RGB list, or null to use the scene's background colour.
        n_outside: samples per ray for the field's background network, when it has one.
    """

    field_kind = "sdf"
    name = "neus"

    def __init__(
        self,
        n_samples: int = 32,
        n_importance: int = 32,
        up_sample_steps: int = 2,
        perturb: bool = True,
        anneal_end: int = 0,
        background: Sequence[float] | None = None,
        n_outside: int = 32,
    ) -> None:
        super().__init__(background, n_outside)
        if n_samples < 2 or n_importance < 0 or up_sample_steps < 0:
            raise ConfigError("renderer: need n_samples >= 2, n_importance >= 0")
        if n_importance and (up_sample_steps == 0 or n_importance % up_sample_steps):
            raise ConfigError("renderer.n_importance must be a multiple of up_sample_steps (> 0)")
        self.n_samples, self.n_importance, self.up_steps = n_samples, n_importance, up_sample_steps
        self.perturb, self.anneal_end = perturb, anneal_end
        self.cos_anneal_ratio = 1.0 if anneal_end == 0 else 0.0

    def update_step(self, step: int) -> None:
        """Schedule hook called by the trainer every step."""
        self.cos_anneal_ratio = 1.0 if self.anneal_end == 0 else min(1.0, step / self.anneal_end)

    @torch.no_grad()
    def _up_sample(self, o: Tensor, d: Tensor, z: Tensor, sdf: Tensor, n: int, inv_s: float):
        """New distances (B, n) where the NeuS weights of a sharp fixed-``s`` SDF are large."""
        pts = o[:, None] + d[:, None] * z[..., None]
        inside = (pts.norm(dim=-1) < 1.0).float()
        inside = torch.maximum(inside[:, :-1], inside[:, 1:])
        prev_sdf, next_sdf = sdf[:, :-1], sdf[:, 1:]
        dist = z[:, 1:] - z[:, :-1]
        mid_sdf = 0.5 * (prev_sdf + next_sdf)
        cos = (next_sdf - prev_sdf) / (dist + 1e-5)
        cos = torch.minimum(torch.cat([torch.zeros_like(cos[:, :1]), cos[:, :-1]], -1), cos)
        cos = cos.clamp(-1e3, 0.0) * inside  # only surfaces entered from outside
        alpha = _neus_alpha(mid_sdf - cos * dist * 0.5, mid_sdf + cos * dist * 0.5, inv_s)
        return sample_pdf(z, render_weights_from_alpha(alpha), n, det=True)

    def _render_rays(self, field: nn.Module, o: Tensor, d: Tensor, near: Tensor, far: Tensor):
        z = stratified(near, far, self.n_samples, self.perturb and self.training)
        if self.n_importance:
            with torch.no_grad():
                sdf = field.sdf((o[:, None] + d[:, None] * z[..., None]).reshape(-1, 3))
                sdf = sdf.reshape(z.shape)
                per_step = self.n_importance // self.up_steps
                for i in range(self.up_steps):
                    new_z = self._up_sample(o, d, z, sdf, per_step, 64.0 * 2**i)
                    z, order = torch.sort(torch.cat([z, new_z], -1), -1)
                    if i + 1 < self.up_steps:  # the last round's SDF is recomputed with grads
                        new_sdf = field.sdf(
                            (o[:, None] + d[:, None] * new_z[..., None]).reshape(-1, 3)
                        )
                        sdf = torch.cat([sdf, new_sdf.reshape(new_z.shape)], -1).gather(1, order)

        B, S = z.shape
        dists = torch.cat([z[:, 1:] - z[:, :-1], ((far - near) / self.n_samples)[:, None]], -1)
        mid = z + 0.5 * dists
        pts = (o[:, None] + d[:, None] * mid[..., None]).reshape(-1, 3)
        dirs = d[:, None].expand(B, S, 3).reshape(-1, 3)
        out = field(pts, dirs, create_graph=torch.is_grad_enabled())
        sdf, grad = out.sdf.reshape(B, S), out.gradient.reshape(B, S, 3)
        inv_s = field.inv_s().clamp(1e-6, 1e6)

        # Unbiased alpha with the cos-anneal trick: early on, let the surface be "seen" even
        # where the SDF slope along the ray is small, to avoid bad local minima.
        true_cos = (d[:, None] * grad).sum(-1)
        r = self.cos_anneal_ratio
        iter_cos = -(torch.relu(-true_cos * 0.5 + 0.5) * (1 - r) + torch.relu(-true_cos) * r)
        alpha = _neus_alpha(sdf - iter_cos * dists * 0.5, sdf + iter_cos * dists * 0.5, inv_s)
        weights = render_weights_from_alpha(alpha)

        color = (weights[..., None] * out.color.reshape(B, S, 3)).sum(1)
        normal = torch.nn.functional.normalize(grad, dim=-1)
        inside = (pts.reshape(B, S, 3).norm(dim=-1) < 1.2).float()
        eik = ((grad.norm(dim=-1) - 1.0) ** 2 * inside).sum() / inside.sum().clamp_min(1.0)
        return RenderOutput(
            color=color,
            opacity=weights.sum(-1),
            depth=(weights * mid).sum(-1),
            normal=(weights[..., None] * normal).sum(1),
            eikonal=eik,
            num_samples=B * S,
            extras={"inv_s": inv_s.detach()},
        )
