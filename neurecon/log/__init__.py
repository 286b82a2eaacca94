"""Experiment logging: one interface, several backends (``logger`` config group)."""

from neurecon.log.loggers import (
    AutoLogger,
    CSVLogger,
    Logger,
    NoneLogger,
    TensorBoardLogger,
    WandbLogger,
)

__all__ = ["AutoLogger", "CSVLogger", "Logger", "NoneLogger", "TensorBoardLogger", "WandbLogger"]
