"""A tiny Hydra app for sweeper tests: a quadratic objective, no training.

Each run writes ``result.json`` with the parameters it received, so a test can check what the
sweeper passed to every trial (fixed values, sampled ranges, devices).
"""

import json
import os

import hydra
from omegaconf import DictConfig, OmegaConf


def extend(cfg: DictConfig, trial) -> None:
    """``hydra.sweeper.custom_search_space``: one more parameter, defined by run."""
    trial.suggest_float("w", 0.0, 1.0)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | list[float]:
    if cfg.fail_above is not None and cfg.x > cfg.fail_above:
        raise RuntimeError(f"x={cfg.x} above fail_above={cfg.fail_above}")
    record = {
        **OmegaConf.to_container(cfg, resolve=True),
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "pid": os.getpid(),
    }
    with open("result.json", "w") as f:  # the trial's own folder (hydra.job.chdir)
        json.dump(record, f)
    value = (cfg.x - 2.0) ** 2 + (cfg.y - 1.0) ** 2 + cfg.w
    return [value, cfg.x] if cfg.two_objectives else value


if __name__ == "__main__":
    main()
