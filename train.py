"""Train a neural surface reconstruction run composed from ``conf/`` (see README)."""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from neurecon.build import run
from neurecon.errors import NeuReconError

log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | list[float]:
    hc = HydraConfig.get()
    try:
        return run(cfg, hc.runtime.output_dir)
    except NeuReconError as e:  # user error: a clear message, no traceback, exit code 2
        log.error("%s", e)
        if hc.mode == RunMode.MULTIRUN:
            raise  # the sweeper records the trial as failed and goes on
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
