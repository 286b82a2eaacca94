"""Training rays drawn where the step runs: the scene's pixels on the training device, pixels
drawn with a generator of that device, rays built there. No host round trip and no host
synchronisation per batch (a data-dependent size or a ``bool(tensor)`` would make the host wait
for the device every step).

``dataset.device`` places the store:

- ``auto``: on the training device when the uint8 pixels, masks and validity fit
  :data:`DEVICE_SHARE` of its free memory (a full-resolution DTU scan is about 280 MB), else
  as ``host``;
- ``device``: on the training device, whatever it takes;
- ``host``: host memory; pixels are drawn and gathered there and each batch is copied in
  page-locked memory without blocking.

On a CPU run the store is the scene's own memory (no copy).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

from neurecon.data.cameras import pixel_rays
from neurecon.errors import ConfigError

log = logging.getLogger(__name__)
PLACEMENTS = ("auto", "device", "host")
DEVICE_SHARE = 0.25  # dataset.device=auto: the share of the device's free memory the store may use
# Pixels without source data are redrawn a fixed number of rounds (a data-dependent loop would
# synchronise): enough rounds that a ray still on one is rarer than this.
MISS_PROBABILITY = 1e-12
MAX_REDRAWS = 64


@dataclass
class RayBatch:
    """Rays in the normalised frame. ``rgb`` / ``mask`` are targets (None when unknown);
    ``view``, ``u``, ``v``: the pixels they go through (training batches; None otherwise).

    Shapes: origins, dirs (B, 3); rgb (B, 3) float in [0, 1]; mask (B,) float in {0, 1};
    view (B,) int64; u, v (B,) int64 column and row.
    """

    origins: Tensor
    dirs: Tensor
    rgb: Tensor | None = None
    mask: Tensor | None = None
    view: Tensor | None = None
    u: Tensor | None = None
    v: Tensor | None = None

    def __len__(self) -> int:
        return self.origins.shape[0]


@dataclass
class PixelStore:
    """The tensors ray batches are drawn from (see :class:`~neurecon.data.scene.Scene`): all on
    ``device``, or all but the cameras on the host (:meth:`to`).

    pixels (P, 3) uint8; masks (P,) uint8 or None; valid (P,) bool or None; sizes (V, 2) and
    offsets (V + 1,) int64; K (V, 3, 3), c2w (V, 4, 4) float32; train_ids (T,) int64.
    ``uniform_hw``: the (H, W) every view shares, or None (mixed sizes); ``train_pixels``: the
    number of training pixels; ``redraws``: rounds of redrawing pixels without source data.
    """

    pixels: Tensor
    masks: Tensor | None
    valid: Tensor | None
    sizes: Tensor
    offsets: Tensor
    K: Tensor
    c2w: Tensor
    train_ids: Tensor
    uniform_hw: tuple[int, int] | None
    train_pixels: int
    redraws: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # rays built here
    # Mixed sizes: (T,) pixels per training view and their running sum, made once (not each
    # step) for the flat draw of :func:`draw_pixels`.
    train_counts: Tensor | None = None
    train_ends: Tensor | None = None

    def __post_init__(self) -> None:
        if self.uniform_hw is None and self.train_ends is None:
            self.train_counts = self.sizes[self.train_ids, 0] * self.sizes[self.train_ids, 1]
            self.train_ends = self.train_counts.cumsum(0)

    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors().values())

    def tensors(self) -> dict[str, Tensor]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: v for k, v in values.items() if isinstance(v, Tensor)}

    def to(self, device: torch.device, images_on_host: bool = False) -> PixelStore:
        """A copy for training on ``device``. ``images_on_host``: everything but the cameras
        stays in host memory, where pixels are drawn and gathered; each batch then travels in
        page-locked memory without blocking (see :func:`gather_batch`)."""
        moved = {
            name: t if images_on_host and name not in ("K", "c2w") else t.to(device)
            for name, t in self.tensors().items()
        }
        return PixelStore(**{**self.__dict__, **moved, "device": device})

    @property
    def draw_device(self) -> torch.device:
        """Where pixels are drawn: the device of the generator to pass."""
        return self.pixels.device


def redraw_rounds(valid_share: float) -> int:
    """Rounds of redrawing that leave a ray on an invalid pixel with probability at most
    :data:`MISS_PROBABILITY`, when ``valid_share`` of the training pixels are valid."""
    if valid_share >= 1.0:
        return 0
    if valid_share <= 0.0:
        raise ConfigError("the training views have no pixel with source data")
    rounds = math.ceil(math.log(MISS_PROBABILITY) / math.log(1.0 - valid_share) - 1e-9)
    if rounds > MAX_REDRAWS:
        log.warning(
            "only %.0f %% of the training pixels have source data: after %d redraws a ray still "
            "lands on one without with probability %.1e",
            100 * valid_share, MAX_REDRAWS, (1.0 - valid_share) ** (MAX_REDRAWS + 1),
        )  # fmt: skip
    return min(rounds, MAX_REDRAWS)


def flat_index(store: PixelStore, view: Tensor, v: Tensor, u: Tensor) -> Tensor:
    """(B,) indices into the ragged pixel store of (view, row v, column u)."""
    return store.offsets[view] + v * store.sizes[view, 1] + u


def draw_pixels(
    store: PixelStore, n: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` uniform training pixels as (view, row, column), each (n,) int64 on the store's
    device (the generator's device)."""
    dev = store.train_ids.device
    if store.uniform_hw is not None:  # three draws: the sequence same-size scenes have always used
        H, W = store.uniform_hw
        idx = torch.randint(0, len(store.train_ids), (n,), generator=generator, device=dev)
        view = store.train_ids[idx]
        v = torch.randint(0, H, (n,), generator=generator, device=dev)
        u = torch.randint(0, W, (n,), generator=generator, device=dev)
        return view, v, u
    # Mixed sizes: a flat index over all training pixels (larger views weigh more).
    counts, ends = store.train_counts, store.train_ends
    r = torch.randint(0, store.train_pixels, (n,), generator=generator, device=dev)
    i = torch.searchsorted(ends, r, right=True)
    view = store.train_ids[i]
    p = r - (ends[i] - counts[i])
    W = store.sizes[view, 1]
    return view, p // W, p % W


def draw_valid_pixels(
    store: PixelStore, n: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`draw_pixels`, with the pixels that have no source data (``store.valid``) redrawn
    ``store.redraws`` times: a fixed count, so the host never waits to learn how many are left."""
    view, v, u = draw_pixels(store, n, generator)
    if store.valid is None:
        return view, v, u
    for _ in range(store.redraws):
        bad = ~store.valid[flat_index(store, view, v, u)]
        view2, v2, u2 = draw_pixels(store, n, generator)
        view, v, u = torch.where(bad, view2, view), torch.where(bad, v2, v), torch.where(bad, u2, u)
    return view, v, u


def gather_batch(store: PixelStore, view: Tensor, v: Tensor, u: Tensor) -> RayBatch:
    """The :class:`RayBatch` of pixels (view, v, u), each (B,), on the
    store's device: rays from the cameras, colours in [0, 1] from the uint8 store, masks in
    {0, 1}. From a host store, the indices and uint8 colours are copied in page-locked memory
    without blocking (the host does not wait for the device)."""
    flat = flat_index(store, view, v, u)
    rgb = store.pixels[flat]
    mask = None if store.masks is None else store.masks[flat]
    dev = store.device
    if store.draw_device != dev:
        view, u, v, rgb = (_to_device(t, dev) for t in (view, u, v, rgb))
        mask = None if mask is None else _to_device(mask, dev)
    o, d = pixel_rays(store.K[view], store.c2w[view], u.float(), v.float())
    m = None if mask is None else (mask > 127).float()
    return RayBatch(o, d, rgb.float() / 255.0, m, view, u, v)


def _to_device(t: Tensor, device: torch.device) -> Tensor:
    # Pinned (torch's caching host allocator keeps the buffer alive until the copy is done).
    return t.pin_memory().to(device, non_blocking=True)


def sample_batch(store: PixelStore, n: int, generator: torch.Generator | None) -> RayBatch:
    """``n`` random rays from random training views, uniform over the valid training pixels,
    built on the store's device."""
    return gather_batch(store, *draw_valid_pixels(store, n, generator))


def place_store(store: PixelStore, device: torch.device, placement: str = "auto") -> PixelStore:
    """The store for training on ``device`` by ``dataset.device`` (:data:`PLACEMENTS`)."""
    if placement not in PLACEMENTS:
        raise ConfigError(f"dataset.device={placement!r}; choose from {list(PLACEMENTS)}")
    if device.type == "cpu":
        return store  # the scene's own memory: nothing to copy or pin
    size = store.nbytes()
    if placement == "auto" and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        placement = "device" if size <= DEVICE_SHARE * free else "host"
        log.info(
            "dataset.device=auto: %.0f MB of pixels %s (%.0f MB free on %s)",
            size / 2**20,
            "on the device" if placement == "device" else "in host memory (batches pinned)",
            free / 2**20, device,
        )  # fmt: skip
    return store.to(device, images_on_host=placement == "host")
