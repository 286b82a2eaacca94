"""Training: the loop, losses, checkpoints."""

from neurecon.train.trainer import Trainer

__all__ = ["Trainer"]
