"""The callbacks group: built-ins removable and configurable, new ones added from config, each
seeing a FitContext (never the Trainer)."""

from __future__ import annotations

import pytest
from conftest import TINY, compose_cfg
from hydra.errors import ConfigCompositionException

from neurecon.build import build
from neurecon.train.callbacks import Callback, FitContext


class StepCounter(Callback):
    """A user's callback, added as ``+callbacks.count._target_=test_callbacks.StepCounter``."""

    def __init__(self, stop_at: int = 0) -> None:
        self.stop_at, self.steps, self.contexts = stop_at, [], set()

    def on_step_end(self, ctx, stats) -> bool:
        self.contexts.add(type(ctx))
        self.steps.append(ctx.state.step)
        return bool(self.stop_at) and ctx.state.step >= self.stop_at


def test_built_in_callbacks_are_removed_configured_and_new_ones_added(tmp_path):
    cfg = compose_cfg([*TINY, "trainer.max_steps=12", "eval.mesh_resolution=0",
                       "~callbacks.checkpoint", "callbacks.log.every=5",
                       "+callbacks.count._target_=test_callbacks.StepCounter",
                       "+callbacks.count.stop_at=10"])  # fmt: skip
    run = build(cfg)
    assert list(run.trainer.named_callbacks) == ["log", "validate", "count"]
    m = run.trainer.fit(run.scene, run.field, run.renderer, run.optimizer, tmp_path)
    count = run.trainer.named_callbacks["count"]
    assert count.steps == list(range(1, 11)) and count.contexts == {FitContext}
    assert [row["step"] for row in run.trainer.history] == [5, 10]  # every 5, stopped at 10
    assert m["status"] == "completed" and m["steps"] == 10
    assert not (tmp_path / "checkpoints").exists()  # ~callbacks.checkpoint


def test_a_misspelt_callback_key_fails_at_compose_time():
    with pytest.raises(ConfigCompositionException, match="evry"):
        compose_cfg(["callbacks.log.evry=5"])
