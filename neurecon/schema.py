"""Typed config nodes: the fixed key sets of the config tree, checked by Hydra itself.

``conf/trainer/default.yaml`` starts from ``trainer/loss: typed`` and ``trainer/guard: typed``,
and ``conf/config.yaml`` from ``metrics: typed``, so an unknown key or a wrong type fails at
compose time with Hydra's own message (``Key 'eikonall' not in 'LossWeights'``). The
dataclasses live beside the code that uses them; this module only registers them.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from neurecon.eval.settings import MetricOptions
from neurecon.train.guard import GuardSettings
from neurecon.train.losses import LossWeights

TYPED = "typed"  # the option name the YAML defaults lists use


def register() -> None:
    """Store the schemas in Hydra's config store (idempotent: a re-store replaces)."""
    cs = ConfigStore.instance()
    cs.store(group="trainer/loss", name=TYPED, node=LossWeights, provider="neurecon")
    cs.store(group="trainer/guard", name=TYPED, node=GuardSettings, provider="neurecon")
    cs.store(group="metrics", name=TYPED, node=MetricOptions, provider="neurecon")


register()
