"""The lr schedule is the optimizer.schedule node: the built-in warm-up + decay classes against
the papers' formulas, a torch scheduler by _target_, and old run folders migrated."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from conftest import TINY, compose_cfg
from hydra.utils import instantiate
from omegaconf import OmegaConf

from neurecon.build import build


def _lrs(schedule, steps: int, lr: float = 1.0) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    sched = schedule(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_the_default_schedule_is_neus_warm_up_and_cosine():
    """NeuS (exp_runner.update_learning_rate): warm-up, then
    (cos(pi * progress) + 1) / 2 * (1 - alpha) + alpha, progress after the warm-up."""
    cfg = compose_cfg(["trainer.max_steps=50", "optimizer.schedule.warmup_steps=10"])
    schedule = partial(instantiate(cfg.optimizer).schedule, max_steps=50)
    alpha, warm, total = 0.05, 10, 50
    for step, lr in enumerate(_lrs(schedule, total)):
        if step < warm:
            assert lr == pytest.approx((step + 1) / warm)
        else:
            progress = (step - warm) / (total - warm)
            assert lr == pytest.approx((math.cos(math.pi * progress) + 1) / 2 * (1 - alpha) + alpha)


def test_the_exponential_schedule_reaches_its_final_ratio():
    cfg = compose_cfg(["trainer.max_steps=40", "optimizer.schedule.warmup_steps=0",
                       "optimizer.schedule._target_=neurecon.optim.schedules.WarmupExp",
                       "optimizer.schedule.final_ratio=0.1"])  # fmt: skip
    lrs = _lrs(partial(instantiate(cfg.optimizer).schedule, max_steps=40), 40)
    assert lrs[0] == pytest.approx(1.0) and lrs[20] == pytest.approx(0.1**0.5)
    assert lrs[39] == pytest.approx(0.1 ** (39 / 40))  # 0.1 at max_steps, after the last step


def test_a_torch_scheduler_is_a_schedule_node(tmp_path):
    cfg = compose_cfg([*TINY, "dataset.shape=sphere", "trainer.max_steps=6",
                       "eval.mesh_resolution=0", "callbacks.log.every=1",
                       "optimizer.schedule._target_=torch.optim.lr_scheduler.StepLR",
                       "~optimizer.schedule.warmup_steps",
                       "~optimizer.schedule.final_ratio", "+optimizer.schedule.step_size=3",
                       "+optimizer.schedule.gamma=0.5"])  # fmt: skip
    run = build(cfg)
    run.trainer.fit(run.scene, run.field, run.renderer, run.optimizer, tmp_path)
    lr0 = cfg.optimizer.lr
    # logged after each step's scheduler step: 3 steps at lr, then halved
    assert [h["lr/network"] for h in run.trainer.history] == pytest.approx(
        [lr0, lr0, lr0 / 2, lr0 / 2, lr0 / 2, lr0 / 4]
    )


def test_a_run_folder_saved_with_optimizer_decay_still_opens(tmp_path):
    from conftest import trained_run_folder

    from neurecon.runs import load_run_config

    run = tmp_path / "old"
    trained_run_folder(run, [*TINY, "dataset.shape=sphere", "trainer.max_steps=2"])
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    del cfg.optimizer["schedule"]
    cfg.optimizer.update({"warmup_steps": 7, "decay": "exp", "final_ratio": 0.2})
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    loaded = load_run_config(run)
    assert OmegaConf.to_container(loaded.optimizer.schedule) == {
        "_target_": "neurecon.optim.schedules.WarmupExp", "_partial_": True, "warmup_steps": 7,
        "final_ratio": 0.2,
    }  # fmt: skip
    assert "decay" not in loaded.optimizer
    assert callable(instantiate(loaded.optimizer).schedule)
