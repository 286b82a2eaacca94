"""NeRF renderer: uniform + importance sampling of one density field."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from neurecon.errors import ConfigError
from neurecon.render.common import RenderOutput, SphereRenderer
from neurecon.render.occupancy import OccupancyGrid, eval_chunked
from neurecon.render.volrend import (
    accumulate,
    density_alpha,
    packed_weights,
    render_weights_from_alpha,
    sample_pdf,
    stratified,
)


class NeRFRenderer(SphereRenderer):
    """Alpha compositing of a density field inside the unit sphere.

    Args:
        n_samples: stratified samples per ray (coarse pass, no gradient).
        n_importance: samples drawn from the coarse weights (fine pass renders both sets).
        perturb: jitter during training.
        background_color: RGB list, or null to use the scene's background colour.
        n_outside: samples per ray for the field's background network, when it has one.
        grid: an :class:`OccupancyGrid` — samples only in occupied cells, at its fixed step
            (``n_samples`` / ``n_importance`` then unused); None: dense two-pass sampling.
    """

    field_kind = "density"
    name = "nerf"

    def __init__(
        self,
        n_samples: int = 64,
        n_importance: int = 32,
        perturb: bool = True,
        background_color: Sequence[float] | None = None,
        n_outside: int = 32,
        grid: OccupancyGrid | None = None,
    ) -> None:
        super().__init__(background_color, n_outside, grid)
        if n_samples < 2 or n_importance < 0:
            raise ConfigError("renderer: need n_samples >= 2 and n_importance >= 0")
        self.n_samples, self.n_importance, self.perturb = n_samples, n_importance, perturb

    def _composite(self, field: nn.Module, o: Tensor, d: Tensor, edges: Tensor, grad: bool):
        """Evaluate the field at interval midpoints. ``edges`` (B, S+1) → weights (B, S), out."""
        mid = 0.5 * (edges[:, 1:] + edges[:, :-1])
        delta = edges[:, 1:] - edges[:, :-1]
        pts = (o[:, None] + d[:, None] * mid[..., None]).reshape(-1, 3)
        if not grad:
            sigma = field.density(pts).reshape(mid.shape)
            return render_weights_from_alpha(density_alpha(sigma, delta)), mid, None
        B, S = mid.shape
        out = field(pts, d[:, None].expand(B, S, 3).reshape(-1, 3))
        weights = render_weights_from_alpha(density_alpha(out.density.reshape(B, S), delta))
        return weights, mid, out

    @torch.no_grad()
    def occupancy(self, field: nn.Module, x: Tensor) -> Tensor:
        """Opacity of one marching step at ``x``: ``1 − exp(−σ · step)``."""
        return density_alpha(field.density(x), self.grid.step_size)

    @torch.no_grad()
    def visibility_alpha(self, field: nn.Module, x: Tensor, ray: Tensor, dt: Tensor) -> Tensor:
        """The samples' own opacity ``1 − exp(−σ·dt)`` from one density pass (no colour)."""
        return density_alpha(eval_chunked(field.density, x, chunk=self.grid.eval_chunk), dt)

    def _render_packed(self, field: nn.Module, o: Tensor, d: Tensor, near: Tensor, far: Tensor):
        """Samples in occupied cells only, composited per ray (packed layout)."""
        B = o.shape[0]
        ray, t0, t1, mid = self._packed_samples(field, o, d, near, far)
        dirs = d[ray]
        out = self._eval_packed(field, o[ray] + dirs * mid[:, None], dirs)
        w = packed_weights(density_alpha(out.density, t1 - t0), ray, B)
        return RenderOutput(
            color=accumulate(w[:, None] * out.color, ray, B),
            opacity=accumulate(w, ray, B),
            depth=accumulate(w * mid, ray, B),
            num_samples=int(ray.numel()),
        )

    def _render_rays(self, field: nn.Module, o: Tensor, d: Tensor, near: Tensor, far: Tensor):
        if self.grid is not None:
            return self._render_packed(field, o, d, near, far)
        # Intervals [t_i, t_{i+1}] represented by their midpoints, so importance samples land in
        # the interval that straddles the surface rather than behind it.
        edges = stratified(near, far, self.n_samples + 1, self.perturb and self.training)
        edges = torch.cat([near[:, None], edges[:, 1:-1], far[:, None]], -1)
        if self.n_importance:
            with torch.no_grad():
                w, _, _ = self._composite(field, o, d, edges, grad=False)
                fine = sample_pdf(edges, w, self.n_importance, det=not self.training)
                edges, _ = torch.sort(torch.cat([edges, fine], -1), -1)
        weights, mid, out = self._composite(field, o, d, edges, grad=True)
        B, S = mid.shape
        return RenderOutput(
            color=(weights[..., None] * out.color.reshape(B, S, 3)).sum(1),
            opacity=weights.sum(-1),
            depth=(weights * mid).sum(-1),
            num_samples=B * S,
        )
