"""Typed config nodes: the fixed key sets of the config tree, checked by Hydra itself.

``conf/trainer/default.yaml`` starts from ``trainer/guard: typed``, ``conf/loss/default.yaml``
from ``color: typed`` (and each built-in term), ``conf/callbacks/default.yaml`` from
``log: typed`` (and each built-in callback), and ``conf/eval/default.yaml`` from ``typed``
(and each built-in metric), so an unknown key or a wrong type fails at compose time with Hydra's own
message (``Key 'weightt' not in 'EikonalLoss'``). The dataclasses live beside the code that
uses them; this module only registers them (a loss term's node is made from its class: its
fields, their defaults, and its ``_target_``).
"""

from __future__ import annotations

import dataclasses
import typing

from hydra.core.config_store import ConfigStore

from neurecon.eval.settings import EvalConfig
from neurecon.losses import (
    ColorLoss,
    EikonalLoss,
    FreeSpaceLoss,
    MaskLoss,
    PhotoConsistencyLoss,
    SparsePointsLoss,
)
from neurecon.metrics.nodes import (
    LPIPS,
    PSNR,
    SSIM,
    Chamfer,
    DTUChamfer,
    ObjectPSNR,
    PhotoPSNR,
    SfMDepth,
)
from neurecon.train.callbacks import CheckpointCallback, LogCallback, ValidationCallback
from neurecon.train.guard import GuardSettings

TYPED = "typed"  # the option name the YAML defaults lists use
# The built-in loss terms: conf/loss/default.yaml's node names, and the optional geometry cues
# (added with +loss/photo=typed, +loss/sparse_points=typed).
LOSS_TERMS = {"color": ColorLoss, "eikonal": EikonalLoss, "mask": MaskLoss,
              "free_space": FreeSpaceLoss, "photo": PhotoConsistencyLoss,
              "sparse_points": SparsePointsLoss}  # fmt: skip
# The built-in metrics: conf/eval/default.yaml's node names under metrics.
METRICS = {"psnr": PSNR, "psnr_masked": ObjectPSNR, "psnr_photo": PhotoPSNR, "ssim": SSIM,
           "lpips": LPIPS, "sfm_depth": SfMDepth, "chamfer": Chamfer,
           "dtu": DTUChamfer}  # fmt: skip
# The built-in callbacks: conf/callbacks/default.yaml's node names.
CALLBACKS = {"log": LogCallback, "validate": ValidationCallback, "checkpoint": CheckpointCallback}


def target_node(cls: type) -> type:
    """A structured-config dataclass with ``cls``'s fields and defaults and its ``_target_``
    (named like ``cls``, so Hydra's messages name the class)."""
    hints = typing.get_type_hints(cls)
    fields = [("_target_", str, dataclasses.field(default=f"{cls.__module__}.{cls.__qualname__}"))]
    fields += [(f.name, hints[f.name], dataclasses.field(default=f.default))
               for f in dataclasses.fields(cls)]  # fmt: skip
    return dataclasses.make_dataclass(cls.__name__, fields)


def register() -> None:
    """Store the schemas in Hydra's config store (idempotent: a re-store replaces)."""
    cs = ConfigStore.instance()
    cs.store(group="trainer/guard", name=TYPED, node=GuardSettings, provider="neurecon")
    cs.store(group="eval", name=TYPED, node=EvalConfig, provider="neurecon")
    for name, cls in METRICS.items():
        cs.store(group=f"eval/metrics/{name}", name=TYPED, node=target_node(cls),
                 provider="neurecon")  # fmt: skip
    for name, cls in LOSS_TERMS.items():
        cs.store(group=f"loss/{name}", name=TYPED, node=target_node(cls), provider="neurecon")
    for name, cls in CALLBACKS.items():
        cs.store(group=f"callbacks/{name}", name=TYPED, node=target_node(cls), provider="neurecon")


register()
