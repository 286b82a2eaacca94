"""Multiresolution hash encoding (Instant-NGP): pure PyTorch, or tiny-cuda-nn on CUDA.

The PyTorch backend follows tiny-cuda-nn's ``HashGrid`` conventions exactly (level scales,
``+0.5`` offset, dense indexing while a level fits its table, 32-bit XOR prime hash, tables
rounded up to multiples of 8, parameters laid out level by level as ``[entry, feature]``), so a
parameter vector means the same thing to both backends and they can be checked against each
other.
"""

from __future__ import annotations

import importlib.util
import logging
import math

import numpy as np
import torch
from torch import Tensor, nn

from neurecon.encoders.hashgrid_cpu import cpu_kernels_available
from neurecon.encoders.hashgrid_cpu import hash_encode as cpu_encode
from neurecon.encoders.hashgrid_ops import Levels, TorchCorners
from neurecon.encoders.hashgrid_ops import hash_encode as autograd_encode
from neurecon.encoders.hashgrid_triton import hash_encode, interpreting, triton_available
from neurecon.errors import ConfigError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "tcnn", "triton", "cpu")
N_FEATURES = (1, 2, 4, 8)  # what tiny-cuda-nn's HashGrid accepts


def tcnn_level_grid(level: int, per_level_scale: float, base_resolution: int) -> tuple[float, int]:
    """(scale, resolution) of one level exactly as tiny-cuda-nn computes them: in float32.

    ``grid_scale = exp2f(level * log2f(per_level_scale)) * base_resolution - 1`` and
    ``resolution = ceilf(scale) + 1`` (tiny-cuda-nn ``grid.h``; the config's per_level_scale is
    read as a float). In float64 some dense levels of max_resolution 512 / 1024 land one cell
    off (64 vs 65), and the layout no longer matches tcnn's.
    """
    f32 = np.float32
    log2_scale = f32(np.log2(f32(per_level_scale)))
    scale = f32(np.exp2(f32(f32(level) * log2_scale)) * f32(base_resolution)) - f32(1.0)
    return float(scale), int(np.ceil(scale)) + 1


def tcnn_available() -> bool:
    """tiny-cuda-nn can run here: CUDA present and ``tinycudann`` installed (not imported)."""
    return torch.cuda.is_available() and importlib.util.find_spec("tinycudann") is not None


def select_backend(backend: str, device: str = "auto") -> str:
    """The backend that runs for ``encoder.backend`` on the field's ``device`` (``auto``: CUDA
    when present): ``auto`` takes the fastest that can run there (tcnn, then triton, then the C
    kernels, then torch); an explicit one that cannot run warns once and falls back to torch.
    A CPU device never gets tcnn or (outside Triton's interpreter) triton, even on a machine
    with CUDA. (On CPU tensors the encoder also uses the C kernels under ``auto`` and
    ``triton``, where they can run: see ``HashGridEncoder.forward``.)"""
    on_cuda = torch.cuda.is_available() if device == "auto" else str(device).startswith("cuda")
    can = {  # asked lazily: the C kernels are built on first use
        "torch": lambda: True,
        "tcnn": lambda: on_cuda and tcnn_available(),
        "triton": lambda: (
            (on_cuda and triton_available()) or (backend == "triton" and interpreting())
        ),
        "cpu": cpu_kernels_available,
    }
    if backend == "auto":
        return next(b for b in ("tcnn", "triton", "cpu", "torch") if can[b]())
    if not can[backend]():
        why = {
            "tcnn": "tiny-cuda-nn needs CUDA and the tinycudann package (see README, "
            "'Fast encoders')",
            "triton": "the Triton kernels need CUDA and the triton package (or "
            "TRITON_INTERPRET=1 for tests)",
            "cpu": "the C kernels could not be built (a C compiler is needed, see README, "
            "'Fast encoders')",
        }[backend]
        log.warning("encoder.backend=%s: %s; using the PyTorch hash grid", backend, why)
        return "torch"
    return backend


class HashGridEncoder(nn.Module):
    """Trilinearly interpolated feature grids at ``n_levels`` resolutions.

    Coarse levels whose grid fits in the table are indexed densely (no collisions); finer levels
    use the spatial hash of Müller et al. 2022. All levels share one parameter tensor and are
    gathered in one call, so the cost does not grow with a Python loop over levels.

    Args:
        in_dim: must be 3.   bound: inputs lie in ``[-bound, bound]^3``.
        n_levels, n_features: levels and features per level.
        log2_table_size: entries per level (at most).
        base_resolution, max_resolution: grid resolution of the coarsest / finest level.
        include_input: prepend the raw input (lets an SDF MLP keep a geometric init).
        backend: ``torch``; ``tcnn`` (tiny-cuda-nn's fused CUDA kernels, when CUDA and
            ``tinycudann`` are available); ``triton`` (neurecon's Triton kernels, on CUDA with
            triton installed, as CUDA builds of PyTorch ship it; anywhere under
            ``TRITON_INTERPRET=1``); ``cpu`` (neurecon's C kernels with OpenMP, built on first
            use with the system's C compiler: ``hashgrid_cpu.py``); ``auto``: tcnn, else
            triton, else cpu, else torch, by what can run. On CPU tensors ``auto`` and
            ``triton`` use the C kernels where they can be built. A backend that cannot run here
            gives one warning and the torch backend.
        progressive_levels, level_every: Neuralangelo's coarse-to-fine schedule: only the
            coarsest ``progressive_levels`` levels are active at first (finer ones output zeros)
            and one more joins every ``level_every`` steps. None: all levels from the start.
        device: the device the field will run on (``trainer.device``), which the backend is
            chosen for.
    Shapes: (N, 3) → (N, out_dim), ``out_dim = n_levels * n_features (+ 3)``.
    """

    def __init__(
        self,
        in_dim: int = 3,
        bound: float = 1.0,
        n_levels: int = 16,
        n_features: int = 2,
        log2_table_size: int = 19,
        base_resolution: int = 16,
        max_resolution: int = 2048,
        include_input: bool = True,
        backend: str = "auto",
        progressive_levels: int | None = None,
        level_every: int = 500,
        device: str = "auto",
    ) -> None:
        super().__init__()
        if in_dim != 3:
            raise ConfigError("encoder: the hash grid encodes 3-D positions (in_dim=3)")
        if backend not in BACKENDS:
            raise ConfigError(f"encoder.backend={backend!r} is unknown; choose from {BACKENDS}")
        if n_levels < 1 or base_resolution < 2:
            raise ConfigError("encoder: need n_levels >= 1 and base_resolution >= 2")
        if n_features not in N_FEATURES:
            raise ConfigError(
                f"encoder.n_features={n_features}: tiny-cuda-nn's hash grid takes {N_FEATURES}"
            )
        if progressive_levels is not None and not (progressive_levels >= 1 and level_every >= 1):
            raise ConfigError(
                f"encoder.progressive_levels={progressive_levels} must be >= 1 (or null) and "
                f"encoder.level_every={level_every} >= 1"
            )
        self.in_dim, self.bound, self.include_input = in_dim, bound, include_input
        self.n_levels, self.n_features = n_levels, n_features
        self.per_level_scale = (
            math.exp((math.log(max_resolution) - math.log(base_resolution)) / (n_levels - 1))
            if n_levels > 1
            else 1.0
        )
        table = 2**log2_table_size
        scales, res, sizes, dense = [], [], [], []
        for lvl in range(n_levels):
            scale, r = tcnn_level_grid(lvl, self.per_level_scale, base_resolution)
            n_dense = r**3
            size = min(table, n_dense)
            size = (size + 7) // 8 * 8  # tiny-cuda-nn rounds every table up to 8 entries
            scales.append(scale)
            res.append(r)
            sizes.append(size)
            dense.append(n_dense <= size)
        offsets = [0]
        for s in sizes:
            offsets.append(offsets[-1] + s)
        f32 = torch.float32
        self.register_buffer("scale", torch.tensor(scales, dtype=f32), persistent=False)
        self.register_buffer("res", torch.tensor(res), persistent=False)
        self.register_buffer("sizes", torch.tensor(sizes), persistent=False)
        self.register_buffer("offsets", torch.tensor(offsets[:-1]), persistent=False)
        self.register_buffer("dense", torch.tensor(dense), persistent=False)
        self.out_dim = n_levels * n_features + (in_dim if include_input else 0)
        self.progressive_levels, self.level_every = progressive_levels, int(level_every)
        start = n_levels if progressive_levels is None else min(progressive_levels, n_levels)
        # Saved with a coarse-to-fine model, so that a run loaded for evaluation encodes as it
        # was trained; without the schedule the state dict is the table alone.
        self.register_buffer(
            "active_levels", torch.tensor(start), persistent=progressive_levels is not None
        )
        # Host-side copies: the finite-difference step and the level mask are read on every
        # forward, and reading the buffer on CUDA would synchronise each time.
        self._active = start
        self._cells = [2.0 * bound / max(sc, 1.0) for sc in scales]
        self._n_dense = sum(dense)  # a prefix: a level is dense while its grid fits the table
        assert all(dense[: self._n_dense]) and not any(dense[self._n_dense :])
        self.config = {
            "otype": "HashGrid",
            "n_levels": n_levels,
            "n_features_per_level": n_features,
            "log2_hashmap_size": log2_table_size,
            "base_resolution": base_resolution,
            "per_level_scale": self.per_level_scale,
        }
        self.backend = select_backend(backend, device)
        self.ran: str | None = None  # the backend the last forward really used
        self.tcnn: nn.Module | None = None
        if self.backend == "tcnn":
            import tinycudann as tcnn  # CUDA-only; reached only when it can run

            self.tcnn = tcnn.Encoding(3, self.config, dtype=torch.float32)
        else:
            self.embeddings = nn.Parameter(
                torch.empty(offsets[-1], n_features).uniform_(-1e-4, 1e-4)
            )
        self.n_params = offsets[-1] * n_features
        # One checkpoint format for both backends: the table is saved as ``embeddings``
        # (entries, features) — the layout is the same, only tcnn keeps it flat as tcnn.params.
        self._register_state_dict_hook(HashGridEncoder._save_as_embeddings)

    @property
    def finest_cell(self) -> float:
        """Cell size of the finest active level in input units: the finite-difference step that
        resolves it (field.gradient=finite_difference with field.fd_eps=null); with
        ``progressive_levels`` it shrinks as finer levels join, as in Neuralangelo."""
        return self._cells[self._active - 1]

    def update_step(self, step: int) -> None:
        """Schedule hook (the trainer calls it before every step): coarse-to-fine levels."""
        if self.progressive_levels is not None:
            self._active = min(self.n_levels, self.progressive_levels + step // self.level_every)
            self.active_levels.fill_(self._active)

    @staticmethod
    def _save_as_embeddings(module: HashGridEncoder, state: dict, prefix: str, local_meta) -> None:
        key = prefix + "tcnn.params"
        if key in state:
            state[prefix + "embeddings"] = state.pop(key).reshape(-1, module.n_features)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        emb, flat = prefix + "embeddings", prefix + "tcnn.params"
        if self.progressive_levels is not None:  # a checkpoint saved without the schedule
            state_dict.setdefault(prefix + "active_levels", torch.tensor(self.n_levels))
        if self.tcnn is not None and emb in state_dict:
            state_dict[flat] = state_dict.pop(emb).reshape(-1)
        elif self.tcnn is None and flat in state_dict:  # a checkpoint from an older tcnn run
            state_dict[emb] = state_dict.pop(flat).reshape(-1, self.n_features)
        for k, t in list(state_dict.items()):
            if k in (emb, flat) and t.numel() != self.n_params:
                raise ConfigError(
                    f"encoder: checkpoint hash table has {t.numel()} values, this encoder "
                    f"{self.n_params} (different levels, features or table size?)"
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._active = int(self.active_levels)

    def _encode_torch(self, u: Tensor) -> Tensor:
        """(N, 3) in [0, 1] → (N, L·F), tiny-cuda-nn's HashGrid in tensor ops, differentiated by
        autograd op by op: the reference the faster backends are tested against, and what
        ``torch.compile`` traces (it cannot trace the hand-written autograd of ``hashgrid_ops``)."""
        c = TorchCorners(u, self.levels(), track_input=True)
        out = torch.einsum("lnc,lncf->nlf", c.w, c.gather(self.embeddings))
        return out.reshape(u.shape[0], self.n_levels * self.n_features)  # also for no point

    def backend_report(self) -> dict[str, str]:
        """Which backend the last forward really used (for metrics.json: ``backend/encoder``)."""
        return {"backend/encoder": self.ran or "none"}

    def levels(self) -> Levels:
        """Per-level constants for the encoding's primitives (on the encoder's device)."""
        i64 = torch.int64
        return Levels(
            self.scale, self.res.to(i64), self.sizes.to(i64), self.offsets.to(i64),
            self.dense.to(i64), self.n_features, self._n_dense,
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        u = ((x + self.bound) / (2 * self.bound)).clamp(0.0, 1.0)  # (N, 3) in [0, 1]
        if self.tcnn is not None:
            if not u.is_cuda:
                raise ConfigError("encoder.backend=tcnn runs on CUDA only (trainer.device=cpu?)")
            out, self.ran = self.tcnn(u).float(), "tcnn"
        elif torch.compiler.is_compiling():  # before triton: compiled graphs trace plain ops
            out = self._encode_torch(u)  # (see _encode_torch)
        elif self.backend == "triton" and (u.is_cuda or interpreting()):
            out, self.ran = hash_encode(u, self.embeddings, self.levels()), "triton"
        elif not u.is_cuda and self.backend != "torch" and cpu_kernels_available():
            out, self.ran = cpu_encode(u, self.embeddings, self.levels()), "cpu"
        else:  # torch; or no C compiler
            c = TorchCorners(u, self.levels())
            out, self.ran = autograd_encode(u, c.gather(self.embeddings), c), "torch"
        if self._active < self.n_levels:
            keep = torch.arange(self.n_levels, device=out.device) < self._active
            out = out * keep.repeat_interleave(self.n_features).to(out.dtype)
        return torch.cat([x, out], dim=-1) if self.include_input else out
