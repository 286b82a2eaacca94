"""What the renderers share: the output type, rendering only rays that hit the unit sphere,
the NeRF++ background network behind it, and the base class. The maths is in
:mod:`neurecon.render.volrend`."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from neurecon.data.cameras import sphere_near_far
from neurecon.geometry.hull import VisualHull
from neurecon.render.occupancy import OccupancyGrid, eval_chunked
from neurecon.render.volrend import density_alpha, packed_transmittance, render_weights_from_alpha


@dataclass
class RenderOutput:
    """What a renderer returns for B rays.

    Shapes: color (B, 3) composited over the background; opacity (B,) accumulated weight;
    depth (B,) expected ray distance; normal (B, 3) weight-averaged normal or None;
    eikonal: scalar mean ``(|∇f| - 1)²`` over samples (SDF fields) or None;
    num_samples: number of field evaluations, for throughput figures.
    """

    color: Tensor
    opacity: Tensor
    depth: Tensor
    normal: Tensor | None = None
    eikonal: Tensor | None = None
    num_samples: int = 0
    extras: dict[str, Tensor] = field(default_factory=dict)


def render_hits(
    origins: Tensor,
    dirs: Tensor,
    near: Tensor,
    far: Tensor,
    hit: Tensor,
    fn: Callable[[Tensor, Tensor, Tensor, Tensor], RenderOutput],
    subset: bool = True,
) -> RenderOutput:
    """Render the rays that hit the unit sphere; the others get zero colour and opacity.

    ``fn(origins, dirs, near, far)`` renders rays. ``subset``: pass it only the hits (dense
    sampling spends no samples on misses); else pass every ray, misses with their empty
    interval (``near == far``: a march gives them no samples) and their output zeroed: no
    boolean indexing, whose data-dependent size makes the host wait for the device (training
    steps). Colours are premultiplied by opacity (no background yet).
    """
    if not subset:
        out = fn(origins, dirs, near, far)
        keep = hit.to(out.opacity.dtype)
        out.color, out.opacity, out.depth = (
            out.color * keep[:, None],
            out.opacity * keep,
            out.depth * keep,
        )
        if out.normal is not None:
            out.normal = out.normal * keep[:, None]
        return out
    B, dev = origins.shape[0], origins.device
    color, normal = torch.zeros(B, 3, device=dev), torch.zeros(B, 3, device=dev)
    opacity, depth = torch.zeros(B, device=dev), torch.zeros(B, device=dev)
    if not bool(hit.any()):
        return RenderOutput(color, opacity, depth, normal, None, 0)
    out = fn(origins[hit], dirs[hit], near[hit], far[hit])
    color = color.index_put((hit,), out.color.to(color.dtype))
    opacity = opacity.index_put((hit,), out.opacity.to(opacity.dtype))
    depth = depth.index_put((hit,), out.depth.to(depth.dtype))
    if out.normal is not None:
        normal = normal.index_put((hit,), out.normal.to(normal.dtype))
    return RenderOutput(color, opacity, depth, normal, out.eikonal, out.num_samples, out.extras)


def render_background(
    net: nn.Module, o: Tensor, d: Tensor, t0: Tensor, n: int, perturb: bool
) -> tuple[Tensor, Tensor]:
    """Composite a background field along rays from ``t0`` (B,) to ~1000·t0, with samples
    uniform in inverse depth (NeRF++). Returns premultiplied colour (B, 3) and opacity (B,)."""
    t = torch.linspace(0.0, 1.0, n + 1, device=o.device).expand(o.shape[0], n + 1)
    if perturb:
        t = (t + (torch.rand_like(t) - 0.5) / n).clamp(0.0, 1.0).sort(-1).values
    z = t0[:, None] / (1.0 - t * 0.999)  # inverse depth 1/t0 → 0.001/t0
    mid, delta = 0.5 * (z[:, 1:] + z[:, :-1]), z[:, 1:] - z[:, :-1]
    B = o.shape[0]
    pts = (o[:, None] + d[:, None] * mid[..., None]).reshape(-1, 3)
    out = net(pts, d[:, None].expand(B, n, 3).reshape(-1, 3))
    w = render_weights_from_alpha(density_alpha(out.density.reshape(B, n), delta))
    return (w[..., None] * out.color.reshape(B, n, 3)).sum(1), w.sum(-1)


class SphereRenderer(nn.Module):
    """Base of the renderers: clip rays to the unit sphere, render hits, composite background.

    Subclasses set ``field_kind`` / ``name`` and implement ``_render_rays(field, o, d, near,
    far)`` for rays that hit the sphere, returning colours *before* the background.
    """

    perturb = False  # subclasses jitter samples in training when configured
    grid_jitter = True  # refresh the occupancy grid at random points of the cells
    field_kind = ""  # the ``kind`` a field must declare
    name = ""  # this renderer's config option; fields of the same option name match it

    def __init__(
        self,
        background_color: Sequence[float] | None = None,
        n_outside: int = 32,
        grid: OccupancyGrid | None = None,
    ) -> None:
        super().__init__()
        # A buffer (not saved): it moves with the renderer, no host-to-device copy per batch.
        colour = None if background_color is None else torch.tensor(list(background_color)).float()
        self.register_buffer("background_color", colour, persistent=False)
        self.n_outside = n_outside
        self.grid = grid

    def _render_rays(self, field: nn.Module, o: Tensor, d: Tensor, near: Tensor, far: Tensor):
        raise NotImplementedError

    def occupancy(self, field: nn.Module, x: Tensor) -> Tensor:
        """(N, 3) → (N,) the largest opacity a marching step near ``x`` can have (grid refresh)."""
        raise NotImplementedError

    def visibility_alpha(self, field: nn.Module, x: Tensor, ray: Tensor, dt: Tensor) -> Tensor:
        """(N,) cheap opacity estimate of packed samples at ``x`` (no gradients), for
        skipping samples behind the surface."""
        raise NotImplementedError

    def _refresh_grid(self, step: int, field: nn.Module) -> None:
        self.grid.update(step, lambda x: self.occupancy(field, x), self.grid_jitter)

    def update_step(self, step: int, field: nn.Module | None = None) -> None:
        """Schedule hook called by the trainer before every step: refreshes the grid when due."""
        if self.grid is not None and field is not None:
            self._refresh_grid(step, field)

    def setup(
        self, device: torch.device, hull: Callable[[], VisualHull | None] | None = None
    ) -> None:
        """Called once before training or rendering on ``device``: resolves (and proves) the
        grid's marching backend, so a first-use kernel build is not timed as training.
        ``hull``: makes the training masks' visual hull (None without masks), for a run
        trained with masks: the grid is carved by it when ``grid.carve`` says so."""
        if self.grid is not None:
            self.grid.resolve_backend(device)
            if hull is not None and self.grid.carve_enabled and (h := hull()) is not None:
                self.grid.carve(h)

    def ensure_grid(self, field: nn.Module) -> None:
        """Refresh a grid that has never seen the field (e.g. one loaded without grid state)."""
        if self.grid is not None and not bool(self.grid.occs.any()):
            self._refresh_grid(0, field)

    def _packed_samples(
        self, field: nn.Module, o: Tensor, d: Tensor, near: Tensor, far: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The grid's packed samples: ray indices, interval starts / ends, midpoints (N,).

        Without gradients (validation, test) the samples behind the surface — transmittance
        below ``grid.early_stop_eps``, by :meth:`visible` — are dropped before the field is
        evaluated in full.
        """
        ray, t0, t1 = self.grid.march(o, d, near, far, self.perturb and self.training)
        mid = 0.5 * (t0 + t1)
        if not torch.is_grad_enabled() and self.grid.early_stop_eps > 0:
            keep = self.visible(field, o[ray] + d[ray] * mid[:, None], ray, t1 - t0, o.shape[0])
            ray, t0, t1, mid = ray[keep], t0[keep], t1[keep], mid[keep]
        return ray, t0, t1, mid

    def visible(self, field: nn.Module, x: Tensor, ray: Tensor, dt: Tensor, n_rays: int) -> Tensor:
        """(N,) bool: the packed samples at ``x`` (N, 3) that the light still reaches, by
        :meth:`visibility_alpha`'s transmittance above ``grid.early_stop_eps``."""
        alpha = self.visibility_alpha(field, x, ray, dt)
        return packed_transmittance(alpha, ray, n_rays) > self.grid.early_stop_eps

    def _eval_packed(self, field: nn.Module, x: Tensor, d: Tensor):
        """The field at packed samples: with a differentiable gradient when training, else in
        chunks of ``grid.eval_chunk`` samples (packed counts per ray chunk vary wildly)."""
        if torch.is_grad_enabled():
            return field(x, d, create_graph=True)
        fn = functools.partial(field, create_graph=False)
        return eval_chunked(fn, x, d, chunk=self.grid.eval_chunk)

    def forward(
        self, field: nn.Module, origins: Tensor, dirs: Tensor, background_color: Tensor
    ) -> RenderOutput:
        """Render rays (B, 3) in the normalised frame.

        Inside the unit sphere: the field. Behind it: the field's ``background_net`` when it has
        one (also for rays that miss the sphere), then the constant ``background_color`` (3,) —
        the renderer's own if configured.
        """
        if getattr(field, "kind", None) != self.field_kind:
            raise TypeError(
                f"renderer={self.name} needs a {self.field_kind} field (field={self.name}), "
                f"got {type(field).__name__}"
            )
        own = self.background_color
        const = own if own is not None else background_color
        near, far, hit = sphere_near_far(origins, dirs)
        out = render_hits(
            origins, dirs, near, far, hit, lambda o, d, n, f: self._render_rays(field, o, d, n, f),
            subset=self.grid is None and not self.training,  # training: no host sync
        )  # fmt: skip
        bg = const.to(origins.device).expand(origins.shape[0], 3)
        bg_net = getattr(field, "background_net", None)
        if bg_net is not None and self.n_outside > 0:
            t0 = torch.where(hit, far, near).clamp_min(1e-2)  # misses: from the closest approach
            c_bg, a_bg = render_background(
                bg_net, origins, dirs, t0, self.n_outside, self.perturb and self.training
            )
            bg = c_bg + (1.0 - a_bg)[:, None] * bg
        out.color = out.color + (1.0 - out.opacity)[:, None] * bg
        return out
