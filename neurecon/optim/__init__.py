"""Optimizers, parameter groups and schedules."""

from neurecon.optim.factory import OptimizerFactory, lr_factor

__all__ = ["OptimizerFactory", "lr_factor"]
