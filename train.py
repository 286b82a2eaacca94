"""Train a neural surface reconstruction run composed from ``conf/`` (see README).

The same as the installed ``neurecon-train``; this script reads the checkout's ``conf/``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from neurecon.cli import train_task


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | list[float]:
    return train_task(cfg)


if __name__ == "__main__":
    main()
