"""Optimizers and their learning-rate schedules: the ``optimizer`` group."""

from neurecon.optim.factory import OptimizerFactory
from neurecon.optim.schedules import WarmupConstant, WarmupCosine, WarmupExp

__all__ = ["OptimizerFactory", "WarmupConstant", "WarmupCosine", "WarmupExp"]
