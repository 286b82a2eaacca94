"""Empty-space skipping: an occupancy grid over the unit cube and packed ray marching.

The grid stores, per cell, the largest opacity a marching step of length ``step_size`` could
have there (an exponential moving maximum, refreshed from the field every ``update_every``
training steps), and a binary mask of cells above ``threshold``. Rays are marched at a fixed
step and only samples in occupied cells are kept, in the *packed* layout nerfacc uses:
``ray_indices`` (N,), ``t_starts`` / ``t_ends`` (N,), sorted by ray then distance.

Backends: ``torch`` (any device) and ``nerfacc`` (its CUDA grid traversal, CUDA tensors only).
``auto`` picks nerfacc on CUDA only after proving it with a tiny real call (:func:`probe_nerfacc`):
the PyPI wheel ships no compiled kernels and builds them on first use (nvcc + ninja), or
leaves them ``None`` and fails on the first march. The probe runs once per process, before
training time starts (``SphereRenderer.setup``), so a kernel build is never timed as training.
nerfacc is never imported on CPU, where its kernels raise ``NotImplementedError``.

The nerfacc estimator is helper state, rebuilt from ``binary`` at every march: it is kept out
of the module tree, so checkpoints of CUDA runs have the same keys as CPU runs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from neurecon.errors import ConfigError

if TYPE_CHECKING:
    from neurecon.geometry.hull import VisualHull

log = logging.getLogger(__name__)
BACKENDS = ("auto", "torch", "nerfacc")


def nerfacc_available() -> bool:
    """True when nerfacc can run here (installed *and* CUDA present). Does not import it."""
    import importlib.util

    return torch.cuda.is_available() and importlib.util.find_spec("nerfacc") is not None


_PROBED: dict[str, str | None] = {}  # device → None (nerfacc works) or why it does not


def probe_nerfacc(device: torch.device | str) -> str | None:
    """Prove nerfacc's grid traversal on ``device`` with one tiny march (once per process).

    Returns None when it works, else the error (a missing package, kernels that failed to
    build, a CPU device). The first call may compile nerfacc's CUDA kernels.
    """
    key = str(device)
    if key not in _PROBED:
        try:
            import nerfacc

            check_probe_samples(*probe_estimator(nerfacc, device).sampling(
                *probe_ray(device), render_step_size=PROBE_STEP, early_stop_eps=0.0))  # fmt: skip
            _PROBED[key] = None
        except Exception as e:  # ImportError, the kernels' AttributeError, build errors, ...
            _PROBED[key] = f"{type(e).__name__}: {e}"
    return _PROBED[key]


PROBE_STEP = 0.5


def probe_ray(device: torch.device | str) -> tuple[Tensor, Tensor]:
    """One ray along +z from z = -2: through the probe's box [-1, 1]³ for t in [1, 3]."""
    return (torch.tensor([[0.0, 0.0, -2.0]], device=device),
            torch.tensor([[0.0, 0.0, 1.0]], device=device))  # fmt: skip


def probe_estimator(nerfacc: Any, device: torch.device | str) -> Any:
    """A 4³ nerfacc estimator over [-1, 1]³ with every cell occupied. nerfacc creates its
    ``binaries`` as zeros (an empty grid), through which any ray gets no sample: the probe
    must fill them, or it fails on every machine."""
    est = nerfacc.OccGridEstimator(
        roi_aabb=[-1.0, -1.0, -1.0, 1.0, 1.0, 1.0], resolution=4, levels=1
    ).to(device)
    est.binaries.fill_(True)
    return est


def check_probe_samples(ray: Tensor, t0: Tensor, t1: Tensor) -> None:
    """The probe ray's samples must be the expected ones: about (3 - 1) / step of them, each of
    one step, all on ray 0 and with midpoints inside the box."""
    n = len(t0)
    if not 3 <= n <= 5:
        raise RuntimeError(f"the probe ray gave {n} samples, expected about 4")
    mid = -2.0 + 0.5 * (t0 + t1)  # z of the midpoints
    if bool((ray != 0).any()) or not bool(((t1 - t0 - PROBE_STEP).abs() < 1e-4).all()):
        raise RuntimeError("the probe ray's samples are not one step each on its ray")
    if not bool(((mid >= -1.0 - 1e-4) & (mid <= 1.0 + 1e-4)).all()):
        raise RuntimeError("the probe ray's samples lie outside the grid")


@dataclasses.dataclass(frozen=True)
class OccupiedBox:
    """The axis-aligned box around the occupied cells, normalised frame: corners ``lo``, ``hi``
    (3,) on the grid's device, ``diagonal`` its length on the host; ``empty`` when no cell is
    occupied."""

    lo: Tensor
    hi: Tensor
    diagonal: float
    empty: bool


def clip_to_box(
    o: Tensor, d: Tensor, near: Tensor, far: Tensor, lo: Tensor, hi: Tensor
) -> tuple[Tensor, Tensor]:
    """Shrink [near, far] (B,) of rays o, d (B, 3) to the box [lo, hi] (3,) (slab test): rays
    that miss it get an empty interval (``far == near``)."""
    safe = torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
    t1, t2 = (lo - o) / safe, (hi - o) / safe
    t_in = torch.minimum(t1, t2).amax(-1)
    t_out = torch.maximum(t1, t2).amin(-1)
    near2, far2 = torch.maximum(near, t_in), torch.minimum(far, t_out)
    return near2, torch.maximum(far2, near2)


class OccupancyGrid(nn.Module):
    """Binary occupancy of ``[-1, 1]^3`` at ``resolution``³ cells for packed ray marching.

    Args:
        resolution: cells per axis.
        n_steps: marching steps across the unit sphere's diameter (step size ``2 / n_steps``).
        update_every: training steps between refreshes (the first step always refreshes).
        threshold: occupied when the stored opacity exceeds ``min(threshold, mean)`` (nerfacc's
            rule: a grid whose values are all small keeps its most opaque cells).
        ema_decay: per refresh, ``value = max(decay * value, new)``: cells empty for a while
            fade out instead of flickering.
        warmup_steps: refresh every cell until then; afterwards the occupied cells plus a random
            quarter of all cells (as nerfacc does), so refreshes stay cheap on big grids.
        early_stop_eps: when rendering without gradients (validation, test), renderers that
            can skip samples whose transmittance fell below this do so (0: off).
        eval_chunk: when rendering without gradients, the field sees at most this many samples
            at a time (bounds validation memory near a training step's).
        backend: ``auto`` | ``torch`` | ``nerfacc``.
        carve: before training on masked views, empty the cells outside the masks' visual
            hull for good (:meth:`carve`): no sample, no refresh, no floater there.
        carve_dilate_px: the masks' dilation for carving, in photo pixels (full-size photos;
            it forgives mask errors and calibration).
    """

    def __init__(
        self,
        resolution: int = 64,
        n_steps: int = 512,
        update_every: int = 16,
        threshold: float = 1e-3,
        ema_decay: float = 0.95,
        warmup_steps: int = 256,
        early_stop_eps: float = 1e-4,
        eval_chunk: int = 32768,
        backend: str = "auto",
        carve: bool = False,
        carve_dilate_px: float = 12.0,
    ) -> None:
        super().__init__()
        if resolution < 2 or n_steps < 2 or update_every < 1:
            raise ConfigError("renderer.grid: need resolution, n_steps >= 2 and update_every >= 1")
        if not 0.0 <= ema_decay <= 1.0 or not threshold > 0.0:
            raise ConfigError("renderer.grid: need 0 <= ema_decay <= 1 and threshold > 0")
        if backend not in BACKENDS:
            raise ConfigError(f"renderer.grid.backend={backend!r}; choose from {list(BACKENDS)}")
        self.resolution, self.n_steps = resolution, n_steps
        self.step_size = 2.0 / n_steps
        self.update_every, self.threshold = update_every, threshold
        self.ema_decay, self.warmup_steps, self.backend = ema_decay, warmup_steps, backend
        self.early_stop_eps, self.eval_chunk = float(early_stop_eps), max(int(eval_chunk), 1)
        self.carve_enabled, self.carve_dilate_px = bool(carve), float(carve_dilate_px)
        R = resolution
        # No refresh yet: every cell is marched (binary), none has a value (occs).
        self.register_buffer("occs", torch.zeros(R, R, R))
        self.register_buffer("binary", torch.ones(R, R, R, dtype=torch.bool))
        # The cells the masks' visual hull allows (all until carved; saved: a resumed or
        # evaluated run keeps its carving).
        self.register_buffer("hull", torch.ones(R, R, R, dtype=torch.bool))
        self._hull_cells: tuple[tuple[int, int], Tensor] | None = None
        self.carved = False  # known on the host: a step asks it without a device sync
        # nerfacc.OccGridEstimator, built lazily on CUDA. A one-element list, not an attribute:
        # nn.Module would register it as a submodule and its buffers would enter state_dict.
        self._estimator: list[nn.Module] = []
        self._warned = False
        self._resolved: dict[str, str] = {}  # device → the backend proven for it
        self.marches = {"torch": 0, "nerfacc": 0}  # marches per backend that really ran
        self._box: tuple[tuple[int, int], OccupiedBox] | None = None  # (binary's version, box)

    def backend_report(self) -> dict[str, str]:
        """Which march backends really ran (for metrics.json: ``backend/march``)."""
        return {"backend/march": "+".join(k for k, v in self.marches.items() if v) or "none"}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Checkpoints written before the estimator was kept out of the tree carry its buffers.
        for k in [k for k in state_dict if k.startswith(prefix + "_estimator.")]:
            del state_dict[k]
        if prefix + "binary" in state_dict and prefix + "hull" not in state_dict:
            state_dict[prefix + "hull"] = torch.ones_like(state_dict[prefix + "binary"])  # older
        if prefix + "hull" in state_dict:
            self.carved = not bool(state_dict[prefix + "hull"].all())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ carving
    @torch.no_grad()
    def carve(self, hull: VisualHull) -> float:
        """Empty, for good, the cells the masks' ``hull`` (its projections take points of the
        grid's frame) has outside: a cell is kept when its ball (centre, ``cell_radius``) can
        reach the dilated mask of every view that sees it. Returns the share of cells kept."""
        R = self.resolution
        centres = self.cell_centres(torch.arange(R**3), jitter=False).numpy()
        out = hull.outside(centres, self.carve_dilate_px, extent=self.cell_radius)
        keep = torch.from_numpy(~out).reshape(R, R, R).to(self.hull.device)
        self.hull.copy_(keep)
        self.binary &= self.hull
        self.carved = not bool(keep.all())
        kept = float(keep.float().mean())
        log.info(
            "occupancy grid carved by the masks' visual hull: %.1f %% of cells kept", 100 * kept
        )
        return kept

    def hull_cells(self) -> Tensor:
        """(M,) flat indices of the cells inside the hull (cached until ``hull`` changes)."""
        key = (self.hull.data_ptr(), self.hull._version)
        if self._hull_cells is None or self._hull_cells[0] != key:
            self._hull_cells = (key, self.hull.flatten().nonzero()[:, 0])
        return self._hull_cells[1]

    # ------------------------------------------------------------------ grid refresh
    @property
    def cell_radius(self) -> float:
        """Half the diagonal of a cell: how far a point of a cell can be from its centre."""
        return math.sqrt(3.0) / self.resolution

    def cell_centres(self, idx: Tensor, jitter: bool) -> Tensor:
        """(N,) flat cell indices → (N, 3) points in the cells (their centres or jittered)."""
        R = self.resolution
        ijk = torch.stack([idx // (R * R), (idx // R) % R, idx % R], -1).float()
        off = torch.rand_like(ijk) if jitter else torch.full_like(ijk, 0.5)
        return (ijk + off) / R * 2.0 - 1.0

    @torch.no_grad()
    def update(
        self,
        step: int,
        occ_fn: Callable[[Tensor], Tensor],
        jitter: bool = True,
        chunk: int = 2**18,
    ) -> bool:
        """Refresh from ``occ_fn`` (N, 3) → (N,) opacity when ``step`` is due; True if refreshed.

        ``jitter``: evaluate at a random point of each cell (density fields: over refreshes
        the moving maximum sees the whole cell) or at its centre (SDF fields, whose
        ``occ_fn`` already accounts for the cell's extent through the distance bound).
        """
        if step > 1 and step % self.update_every:
            return False
        n = self.resolution**3
        dev = self.occs.device
        if step < self.warmup_steps:
            idx = self.hull_cells()  # every cell the carving left (cached: no host sync)
        else:  # the occupied cells and a random quarter of the hull's, sorted, each once
            pick = self.binary.flatten().clone()
            pick[torch.randint(0, n, (n // 4,), device=dev)] = True
            idx = (pick & self.hull.flatten()).nonzero()[:, 0]  # the refresh's one host sync
        flat = self.occs.view(-1)
        new = torch.cat([occ_fn(self.cell_centres(c, jitter)).float() for c in idx.split(chunk)])
        new = torch.nan_to_num(new, nan=1.0)  # a NaN field must not hide space
        flat[idx] = torch.maximum(flat[idx] * self.ema_decay, new)
        # min(threshold, mean) on the device; a threshold of 0 (an all-zero grid) keeps all.
        thre = flat.mean().clamp(max=self.threshold)
        self.binary.copy_(((self.occs > thre) | (thre <= 0)) & self.hull)
        return True

    def occupied(self, x: Tensor) -> Tensor:
        """(..., 3) points → (...) bool; points outside the cube are empty."""
        return self._lookup(self.binary, x)

    def in_hull(self, x: Tensor) -> Tensor:
        """(..., 3) points → (...) bool: in a cell the carving kept (outside the cube: False)."""
        return self._lookup(self.hull, x)

    def _lookup(self, cells: Tensor, x: Tensor) -> Tensor:
        R = self.resolution
        ijk = ((x + 1.0) * 0.5 * R).floor().long()
        inside = ((ijk >= 0) & (ijk < R)).all(-1)
        ijk = ijk.clamp(0, R - 1)
        return cells[ijk[..., 0], ijk[..., 1], ijk[..., 2]] & inside

    # ------------------------------------------------------------------ marching
    def _warn_once(self, msg: str, *args: Any) -> None:
        if not self._warned:
            log.warning(msg, *args)
            self._warned = True

    def resolve_backend(self, device: torch.device) -> str:
        """The backend marches on ``device`` will use; proves nerfacc first (see module doc).
        Decided once per device (no package lookup on every march)."""
        key = str(device)
        if key not in self._resolved:
            self._resolved[key] = self._resolve_backend(device)
        return self._resolved[key]

    def _resolve_backend(self, device: torch.device) -> str:
        if self.backend == "torch" or device.type != "cuda":
            if self.backend == "nerfacc":
                self._warn_once("renderer.grid.backend=nerfacc needs CUDA; using the torch backend")
            return "torch"
        if not nerfacc_available():
            if self.backend == "nerfacc":
                self._warn_once(
                    "renderer.grid.backend=nerfacc but nerfacc is not installed "
                    "(pip install nerfacc); using the torch backend"
                )
            return "torch"
        error = probe_nerfacc(device)
        if error is not None:
            self._warn_once(
                "renderer.grid.backend=%s: nerfacc is installed but does not run here (%s; its "
                "CUDA kernels need nvcc and ninja to build); using the torch backend",
                self.backend,
                error,
            )
            return "torch"
        return "nerfacc"

    @torch.no_grad()
    def march(
        self, o: Tensor, d: Tensor, near: Tensor, far: Tensor, perturb: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Samples of fixed length ``step_size`` in occupied cells between ``near`` and ``far``.

        Shapes: o, d (B, 3); near, far (B,) → ray_indices (N,) long, t_starts, t_ends (N,).
        ``perturb`` shifts each ray's sample grid by a random fraction of a step.
        """
        backend = self.resolve_backend(o.device)
        self.marches[backend] += 1  # which backend really ran (reported, and tested on CUDA)
        if backend == "nerfacc":
            return self._march_nerfacc(o, d, near, far, perturb)
        dt = self.step_size
        box = self.occupied_box()
        if box.empty:
            near = far  # nothing occupied: no samples
        else:
            near, far = clip_to_box(o, d, near, far, box.lo.to(o.dtype), box.hi.to(o.dtype))
        start = near + (torch.rand_like(near) if perturb else 0.5) * dt
        # Steps enough for the longest chord of the box inside the unit sphere, known on the
        # host (no read-back of this batch's span); the steps past a ray's far end are dropped.
        K = max(1, math.ceil(min(2.0, box.diagonal) / dt) + 1)
        t = start[:, None] + dt * torch.arange(K, device=o.device, dtype=o.dtype)  # (B, K)
        keep = t < far[:, None]
        keep &= self.occupied(o[:, None] + d[:, None] * t[..., None])
        # The march's one host sync: the sample count sizes the output (nerfacc's traversal
        # reads its count back too, ``cumsum[-1].item()`` in its data_spec.hpp).
        ray, k = keep.nonzero(as_tuple=True)  # row-major: sorted by ray, then distance
        tm = t[ray, k]
        return ray, tm - 0.5 * dt, tm + 0.5 * dt

    def occupied_box(self) -> OccupiedBox:
        """The box around all occupied cells (cached until ``binary`` changes: a refresh, a
        load, an in-place edit). Computing it reads two numbers back, once per change."""
        key = (self.binary.data_ptr(), self.binary._version)
        if self._box is None or self._box[0] != key:
            R = self.resolution
            axes = torch.stack(
                [
                    self.binary.any(dim=(1, 2)),
                    self.binary.any(dim=(0, 2)),
                    self.binary.any(dim=(0, 1)),
                ]
            ).int()  # (3, R)
            first = axes.argmax(-1)
            last = R - 1 - axes.flip(-1).argmax(-1)
            lo, hi = first / R * 2 - 1, (last + 1) / R * 2 - 1  # (3,) float32, on the device
            empty, diag = torch.stack([axes.amax() == 0, (hi - lo).norm()]).tolist()
            self._box = (key, OccupiedBox(lo, hi, float(diag), bool(empty)))
        return self._box[1]

    def _march_nerfacc(self, o, d, near, far, perturb):
        if not self._estimator:
            import nerfacc  # CUDA-only path; never reached on CPU

            self._estimator.append(
                nerfacc.OccGridEstimator(
                    roi_aabb=[-1.0, -1.0, -1.0, 1.0, 1.0, 1.0], resolution=self.resolution, levels=1
                ).to(o.device)
            )
        est = self._estimator[0]
        est.binaries = self.binary[None].contiguous()  # our refresh rule, nerfacc's traversal
        ray, t0, t1 = est.sampling(
            o.contiguous(),
            d.contiguous(),
            t_min=near.contiguous(),
            t_max=far.contiguous(),
            render_step_size=self.step_size,
            stratified=perturb,
            early_stop_eps=0.0,
        )
        return ray.long(), t0, t1


def eval_chunked(fn: Callable[..., Any], *inputs: Tensor, chunk: int) -> Any:
    """``fn(*inputs)`` over slices of at most ``chunk`` rows, outputs concatenated.

    For rendering without gradients: packed sample counts vary wildly between ray chunks, and
    this keeps the field's activations (the memory peak) at ``chunk`` samples whatever the rays.
    ``fn`` returns a tensor or a dataclass of tensors (``SDFOutput``, ``DensityOutput``).
    """
    n = inputs[0].shape[0]
    if n <= chunk:
        return fn(*inputs)
    outs = [fn(*(x[i : i + chunk] for x in inputs)) for i in range(0, n, chunk)]
    if isinstance(outs[0], Tensor):
        return torch.cat(outs)
    names = [f.name for f in dataclasses.fields(outs[0])]
    return type(outs[0])(**{k: torch.cat([getattr(o, k) for o in outs]) for k in names})
