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
from neurecon.fields.base import SDFOutput
from neurecon.render.common import RenderOutput, SphereRenderer
from neurecon.render.occupancy import OccupancyGrid, eval_chunked
from neurecon.render.volrend import (
    accumulate,
    carved_violation,
    neus_alpha,
    packed_transmittance,
    packed_weights,
    ray_starts,
    render_weights_from_alpha,
    sample_pdf,
    stratified,
)


def _inv_s(field: nn.Module) -> Tensor:
    """The field's ``inv_s``, kept in a range where the sigmoids stay finite."""
    return field.inv_s().clamp(1e-6, 1e6)


class NeuSRenderer(SphereRenderer):
    """Volume rendering of an SDF field.

    Args:
        n_samples: uniform samples per ray.  n_importance: extra samples added by up-sampling.
        up_sample_steps: rounds of up-sampling (sharpness 64·2^i as in NeuS).
        perturb: jitter uniform samples during training.
        anneal_end: steps over which the cos-anneal ratio goes 0 → 1 (0: no annealing).
        background_color: RGB list, or null to use the scene's background colour.
        n_outside: samples per ray for the field's background network, when it has one.
        grid: an :class:`OccupancyGrid` — samples only in occupied cells, at its fixed step
            (``n_samples`` / ``n_importance`` then unused); None: dense hierarchical sampling.
        n_eikonal: with a grid, extra random points in the unit ball per step for the eikonal
            term, so the SDF stays a distance away from the surface (where no sample lands).
    """

    field_kind = "sdf"
    name = "neus"
    grid_jitter = False  # cell centres + the distance bound below cover whole cells
    visibility_stride = 4  # :meth:`visible` evaluates every 4th sample of a ray

    def __init__(
        self,
        n_samples: int = 32,
        n_importance: int = 32,
        up_sample_steps: int = 2,
        perturb: bool = True,
        anneal_end: int = 0,
        background_color: Sequence[float] | None = None,
        n_outside: int = 32,
        grid: OccupancyGrid | None = None,
        n_eikonal: int = 1024,
    ) -> None:
        super().__init__(background_color, n_outside, grid)
        self.n_eikonal = int(n_eikonal)
        if n_samples < 2 or n_importance < 0 or up_sample_steps < 0:
            raise ConfigError("renderer: need n_samples >= 2, n_importance >= 0")
        if n_importance and (up_sample_steps == 0 or n_importance % up_sample_steps):
            raise ConfigError("renderer.n_importance must be a multiple of up_sample_steps (> 0)")
        self.n_samples, self.n_importance, self.up_steps = n_samples, n_importance, up_sample_steps
        self.perturb, self.anneal_end = perturb, anneal_end
        self.cos_anneal_ratio = 1.0 if anneal_end == 0 else 0.0

    def update_step(self, step: int, field: nn.Module | None = None) -> None:
        """Schedule hook called by the trainer every step (cos-anneal ratio, grid refresh)."""
        self.cos_anneal_ratio = 1.0 if self.anneal_end == 0 else min(1.0, step / self.anneal_end)
        super().update_step(step, field)

    @torch.no_grad()
    def occupancy(self, field: nn.Module, x: Tensor) -> Tensor:
        """Opacity of a step entering the surface head-on at the closest SDF value the cell
        around the centre ``x`` can hold, ``max(|f(x)| − r_cell, 0)`` (exact for an SDF with
        ``|∇f| ≤ 1``, which the eikonal term keeps): large near the surface, tiny once
        ``inv_s · |f|`` is."""
        inv_s = _inv_s(field).detach()  # a tensor: float() would wait for the device
        a = (field.sdf(x).abs() - self.grid.cell_radius).clamp_min(0.0)
        half = 0.5 * self.grid.step_size
        return neus_alpha(a + half, a - half, inv_s)

    def _alpha(self, field: nn.Module, out, d: Tensor, dists: Tensor) -> tuple[Tensor, Tensor]:
        """Unbiased NeuS alpha of samples with SDF ``out.sdf`` and gradient ``out.gradient``
        over intervals ``dists``, seen along ``d`` (any matching shapes ``(..., )``/``(..., 3)``).

        The cos-anneal trick: early on, let the surface be "seen" even where the SDF slope
        along the ray is small, to avoid bad local minima.
        """
        inv_s = _inv_s(field)
        true_cos = (d * out.gradient).sum(-1)
        r = self.cos_anneal_ratio
        iter_cos = -(torch.relu(-true_cos * 0.5 + 0.5) * (1 - r) + torch.relu(-true_cos) * r)
        half = iter_cos * dists * 0.5
        return neus_alpha(out.sdf - half, out.sdf + half, inv_s), inv_s

    def _eikonal_points(self, like: Tensor) -> Tensor:
        """``n_eikonal`` random points (M, 3) in the unit ball, for the eikonal term."""
        n = self.n_eikonal
        x = torch.randn(n, 3, device=like.device)
        return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6) * torch.rand(n, 1, device=x.device)

    @torch.no_grad()
    def visibility_alpha(self, field: nn.Module, x: Tensor, ray: Tensor, dt: Tensor) -> Tensor:
        """NeuS's discrete opacity between consecutive samples of a ray from one SDF pass (no
        gradient, no colour); a ray's last sample gets 0. By this estimate what is dropped
        weighs < eps per ray (the final weights use the gradient-based alpha, which differs
        slightly)."""
        sdf = eval_chunked(field.sdf, x, chunk=self.grid.eval_chunk)
        same = torch.zeros_like(ray, dtype=torch.bool)
        same[:-1] = ray[1:] == ray[:-1]  # the next sample belongs to the same ray
        alpha = neus_alpha(sdf, torch.roll(sdf, -1), _inv_s(field).detach())
        return torch.where(same, alpha, torch.zeros_like(sdf))

    def visible(self, field: nn.Module, x: Tensor, ray: Tensor, dt: Tensor, n_rays: int) -> Tensor:
        """The samples ahead of the point where the transmittance of every
        ``visibility_stride``-th sample of each ray falls below ``early_stop_eps``: a quarter of
        the SDF evaluations of the full test, and what is dropped weighs no more than it allows.

        That transmittance bounds the full one from above: across the samples between two
        evaluated ones, the product of ``1 − α = min(1, Φ(f_{i+1}) / (Φ(f_i) + 1e-5))`` is at
        most the same ratio taken from the ends (by induction along the samples). So every
        dropped sample is one the full test drops too; the few more it keeps (up to a stride
        behind the surface) weigh less than ``early_stop_eps`` together."""
        k = self.visibility_stride
        if k <= 1 or ray.numel() == 0:
            return super().visible(field, x, ray, dt, n_rays)
        rank = torch.arange(ray.numel(), device=ray.device) - ray_starts(ray, n_rays)[ray]
        coarse = rank % k == 0
        ic = coarse.nonzero().squeeze(1)
        t_coarse = packed_transmittance(
            self.visibility_alpha(field, x[ic], ray[ic], dt[ic]), ray[ic], n_rays
        )
        # Each sample's latest evaluated one (every ray's first sample is one).
        return t_coarse[torch.cumsum(coarse, 0) - 1] > self.grid.early_stop_eps

    def _render_packed(self, field: nn.Module, o: Tensor, d: Tensor, near: Tensor, far: Tensor):
        """Samples in occupied cells only, composited per ray (packed layout)."""
        B = o.shape[0]
        ray, t0, t1, mid = self._packed_samples(field, o, d, near, far)
        dirs = d[ray]
        pts = o[ray] + dirs * mid[:, None]
        n = pts.shape[0]
        extras: dict[str, Tensor] = {}
        if torch.is_grad_enabled() and self.n_eikonal > 0:
            # The eikonal term's random points ride in the samples' field call: a backward pass
            # through the hash grid costs per call as well as per point (its table's gradient
            # is dense), and they are a few per cent of the points.
            xe = self._eikonal_points(pts)
            both = self._eval_packed(
                field, torch.cat([pts, xe]), torch.cat([dirs, torch.zeros_like(xe)])
            )
            out = SDFOutput(sdf=both.sdf[:n], gradient=both.gradient[:n], color=both.color[:n])
            eik = (both.gradient.norm(dim=-1) - 1.0) ** 2  # samples, then the random points
            if self.grid.carved:  # the random points in carved space must be outside (f > 0)
                extras["free_space"] = carved_violation(both.sdf[n:], ~self.grid.in_hull(xe))
        else:
            out = self._eval_packed(field, pts, dirs)
            eik = (out.gradient.norm(dim=-1) - 1.0) ** 2
        alpha, inv_s = self._alpha(field, out, dirs, t1 - t0)
        w = packed_weights(alpha.reshape(-1), ray, B)
        normal = torch.nn.functional.normalize(out.gradient, dim=-1)
        return RenderOutput(
            color=accumulate(w[:, None] * out.color, ray, B),
            opacity=accumulate(w, ray, B),
            depth=accumulate(w * mid, ray, B),
            normal=accumulate(w[:, None] * normal, ray, B),
            eikonal=eik.mean() if eik.numel() else None,
            num_samples=int(ray.numel()),
            extras={"inv_s": inv_s.detach(), **extras},
        )

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
        alpha = neus_alpha(mid_sdf - cos * dist * 0.5, mid_sdf + cos * dist * 0.5, inv_s)
        return sample_pdf(z, render_weights_from_alpha(alpha), n, det=True)

    def _render_rays(self, field: nn.Module, o: Tensor, d: Tensor, near: Tensor, far: Tensor):
        if self.grid is not None:
            return self._render_packed(field, o, d, near, far)
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
        alpha, inv_s = self._alpha(field, out, dirs, dists.reshape(-1))
        weights = render_weights_from_alpha(alpha.reshape(B, S))
        grad = out.gradient.reshape(B, S, 3)

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
