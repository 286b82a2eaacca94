"""Side jobs around the training loop, behind one small interface.

The loop (``Trainer._train_loop``) optimises; everything else — logging, validation, pruning
reports, checkpoints, a job's deadline — is a :class:`Callback`. They are the ``callbacks``
config group (``conf/callbacks/default.yaml``: ``log``, ``validate``, ``checkpoint``), composed
like lightning-hydra-template's: ``~callbacks.validate`` drops one,
``+callbacks.mine._target_=my.module.MyCallback`` adds one; the Optuna sweeper adds
``callbacks.prune`` (:mod:`neurecon.train.pruning`) and a SLURM job ``callbacks.deadline``
(:mod:`neurecon.cluster`). ``Trainer.fit(callbacks=[...])`` adds more from Python (tests inject
faults that way: ``tests/faults.py``).

A callback sees a :class:`FitContext` (the state, the scene, the logger, the evaluation
settings, the run folder), never the trainer: this module does not import the loop.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from neurecon.device import HostSyncCounter
from neurecon.eval import score_views
from neurecon.metrics import psnr

if TYPE_CHECKING:
    from neurecon.data.scene import Scene
    from neurecon.eval.settings import EvalSettings
    from neurecon.train.guard import NaNGuard
    from neurecon.train.state import TrainState

log = logging.getLogger(__name__)


@dataclass
class FitContext:
    """What a callback may read or use during one ``fit``: ``state`` (field, renderer,
    optimizer, step), ``scene``, ``eval`` (evaluation settings: chunk, device, metrics),
    ``logger``, ``out`` (the run folder), ``max_steps``, ``guard`` (the NaN guard: counters,
    :meth:`~neurecon.train.guard.NaNGuard.key_params_finite`), ``history`` (rows logged so far;
    a callback may append), ``bar`` (the progress bar, or None) and ``callbacks`` (all of the
    run's, e.g. to tell them of a validation). ``stop_reason`` is set once training is ending
    early (a time budget or a callback's :meth:`Callback.should_stop`)."""

    state: TrainState
    scene: Scene
    eval: EvalSettings
    logger: Any
    out: Path
    max_steps: int
    guard: NaNGuard
    history: list[dict[str, float]] = field(default_factory=list)
    bar: Any = None
    callbacks: list[Callback] = field(default_factory=list)
    stop_reason: str | None = None

    _finite: tuple[tuple[int, ...], bool] | None = field(default=None, repr=False)

    def key_params_finite(self) -> bool:
        """Whether the last update left the key parameters finite
        (:meth:`~neurecon.train.guard.NaNGuard.key_params_finite`, a host sync), read back once
        per step and state of the parameters: validation, the checkpoint and the end-of-training
        check of one step share it (cached on the step and the parameters' in-place versions,
        which every update and every roll back bumps)."""
        versions = (self.state.step, *(p._version for p in self.state.field.parameters()))
        if self._finite is None or self._finite[0] != versions:
            self._finite = (versions, self.guard.key_params_finite(self.state.field))
        return self._finite[1]

    @property
    def last_step(self) -> bool:
        """Whether this step ends training (``max_steps`` reached or a stop reason set)."""
        return self.state.step >= self.max_steps or self.stop_reason is not None


class Callback:
    """Hooks, in the order the loop calls them in one iteration. Defaults do nothing.

    ``stats`` (``on_step_end``): ``samples`` (field evaluations this step), ``rays``, ``loss``,
    ``terms`` (loss terms), ``render`` (the RenderOutput), ``batch`` (the RayBatch),
    ``samples_total`` (this session's field evaluations so far), ``mask`` (the batch's mask
    when training uses masks, else None).
    """

    def on_fit_start(self, ctx: FitContext) -> None:
        """Before the first step (after a resume, at the resumed step)."""

    def on_loss(self, ctx: FitContext, loss: Tensor) -> Tensor:
        """May replace the step's loss (fault injection)."""
        return loss

    def on_after_backward(self, ctx: FitContext) -> None:
        """Gradients exist, before any check or optimizer step."""

    def on_after_optimizer_step(self, ctx: FitContext) -> bool:
        """After the optimizer step; True marks a broken parameter (the guard rolls back)."""
        return False

    def deadline(self) -> float | None:
        """The wall-clock time (``time.time()``) by which the whole run must have ended, or
        None. The trainer stops training early enough to evaluate by the earliest one."""
        return None

    def should_stop(self, ctx: FitContext) -> str | None:
        """After an applied step, before any ``on_step_end``: a reason to end training now (a
        deadline), or None. Asked once per step, so every ``on_step_end`` of that step sees the
        same ``ctx.stop_reason`` (the checkpoint callback saves the step that ends training)."""
        return None

    def on_validation_end(self, ctx: FitContext, res: dict) -> None:
        """After a periodic validation with its ``val/*`` figures."""

    def on_step_end(self, ctx: FitContext, stats: dict[str, Any]) -> bool:
        """After an applied step; True ends training early."""
        return False


def train_psnr(color: Tensor, rgb: Tensor, mask: Tensor | None) -> dict[str, float]:
    """The batch's PSNR by the test PSNR's rule: with masks (training uses them), over the
    foreground rays only, as ``test/psnr_masked``: the photos' own backgrounds (white in some
    views of a release, grey or dark in others) are not what a masked render is asked to
    produce. The PSNR against the whole photo is then ``train/psnr_photo``. color, rgb (B, 3);
    mask (B,) in {0, 1} or None."""
    c, g = color.detach().cpu().numpy(), rgb.detach().cpu().numpy()  # a logged step: one copy
    if mask is None:
        return {"train/psnr": psnr(c, g)}
    fg = mask.detach().cpu().numpy() > 0.5
    return {"train/psnr": psnr(c, g, fg) if fg.any() else float("nan"),
            "train/psnr_photo": psnr(c, g)}  # fmt: skip


@dataclass
class LogCallback(Callback):
    """Every ``every`` steps (and the last): a row of loss terms, train PSNR, learning rates,
    the field's own figures (``field.stats()``), throughput and guard counters, to the logger,
    ``ctx.history`` and the progress bar."""

    every: int = 50

    def on_step_end(self, ctx: FitContext, stats: dict[str, Any]) -> bool:
        state = ctx.state
        step = state.step
        if not (step % self.every == 0 or step == ctx.max_steps):
            return False
        r, batch, loss, opt = stats["render"], stats["batch"], stats["loss"], state.optimizer
        row = {"step": step, "loss": loss.item(),
               **train_psnr(r.color.float(), batch.rgb, stats.get("mask"))}  # fmt: skip
        row.update({f"loss/{k}": v.item() for k, v in stats["terms"].items()})
        row.update({f"lr/{g.get('name', i)}": g["lr"] for i, g in enumerate(opt.param_groups)})
        row.update(state.field.stats())
        row["samples_per_s"] = stats["samples_total"] / (time.time() - state.t0)
        row.update(ctx.guard.counters())
        ctx.history.append(row)
        ctx.logger.log_metrics(step, row)
        post = {"loss": f"{row['loss']:.4f}", "psnr": f"{row['train/psnr']:.2f}"}
        if "inv_s" in row:
            post["inv_s"] = f"{row['inv_s']:.1f}"
        post["lr"] = f"{row.get('lr/network', opt.param_groups[0]['lr']):.2e}"  # the main group
        if ctx.bar is not None:
            ctx.bar.set_postfix(post)
        log.debug("step %d %s", step, row)
        return False


@dataclass
class ValidationCallback(Callback):
    """Every ``every`` steps (0: never; not the last step: the final evaluation follows), the
    view metrics that run at validation (PSNR, SSIM: no LPIPS) on the first ``views`` test
    views, panels to ``RUN/val`` and to the logger; then ``on_validation_end`` of every
    callback (the sweeper's pruning reads it)."""

    every: int = 1000
    views: int = 1

    def on_step_end(self, ctx: FitContext, stats: dict[str, Any]) -> bool:
        state = ctx.state
        step = state.step
        if not (self.every and step % self.every == 0 and step < ctx.max_steps):
            return False
        if not ctx.key_params_finite():
            return False  # the last update broke it: the next step's check rolls it back
        views = ctx.scene.test_ids.tolist()[: max(1, self.views)]
        names = [f"step_{step:07d}_view_{v:03d}.png" for v in views]
        res, _, panels = score_views(
            ctx.scene, state.field, state.renderer, views, ctx.eval, ctx.out / "val", "val",
            names, validation=True,
        )  # fmt: skip
        log.info("step %d validation: %s", step, res)
        ctx.logger.log_metrics(step, res)
        ctx.logger.log_images(step, panels)
        for cb in ctx.callbacks:
            cb.on_validation_end(ctx, res)
        return False


@dataclass
class CheckpointCallback(Callback):
    """Every ``every`` steps (0: only the last), at the last step and when training ends early
    (time budget, deadline): ``RUN/checkpoints/step_*.ckpt`` (atomic), the newest ``keep``
    kept."""

    every: int = 1000
    keep: int = 2

    def on_step_end(self, ctx: FitContext, stats: dict[str, Any]) -> bool:
        step = ctx.state.step
        if (self.every and step % self.every == 0) or ctx.last_step:
            # The step's own check saw the previous update; a checkpoint is of a checked state
            # (a broken one is not saved: the next step's check rolls it back).
            if ctx.key_params_finite():
                ctx.state.save(ctx.out / "checkpoints", self.keep)
            else:
                log.warning("step %d: a key parameter is non-finite; checkpoint not saved", step)
        return False


@dataclass
class DeadlineCallback(Callback):
    """The run ends by a wall-clock time ``at`` (``time.time()`` seconds; inf: never), e.g. a
    margin before a SLURM job's limit (:mod:`neurecon.cluster` adds it as
    ``callbacks.deadline``, and its warning signal moves ``at`` to now). The trainer stops
    training early enough for the evaluation to finish by then (:meth:`deadline`). Unlike
    ``trainer.max_time`` it ignores earlier sessions; the run ends ``time_limit``."""

    at: float = math.inf

    def deadline(self) -> float | None:
        return self.at if math.isfinite(self.at) else None

    def should_stop(self, ctx: FitContext) -> str | None:
        if time.time() >= self.at:
            return f"the job's time limit is near: stopped at step {ctx.state.step}"
        return None


class SyncCountCallback(Callback):
    """Counts, for the loop iterations ending at ``steps``, the calls that would make the host
    wait for the device: from the end of the previous step to the end of this one, every other
    callback of the step included (add it last). ``counter`` makes the context manager that
    records them (a ``.calls`` list): :class:`~neurecon.device.HostSyncCounter` (any device),
    or one around CUDA's own ``torch.cuda.set_sync_debug_mode`` (``tests/test_cuda.py``).
    ``per_step``: {step: calls}. For finding a sync that slows a GPU run:
    ``+callbacks.syncs._target_=neurecon.train.callbacks.SyncCountCallback
    +callbacks.syncs.steps=[101,102]``."""

    def __init__(
        self, steps: Sequence[int] = (101, 102), counter: Callable[[], Any] = HostSyncCounter
    ) -> None:
        self.steps, self.per_step, self.counter = set(steps), {}, counter
        self._counting: Any = None

    def on_step_end(self, ctx: FitContext, stats: dict[str, Any]) -> bool:
        step = ctx.state.step
        if self._counting is not None:
            self._counting.__exit__(None, None, None)
            self.per_step[step] = list(self._counting.calls)
            log.info(
                "step %d: %d host syncs %s", step, len(self.per_step[step]), self.per_step[step]
            )
            self._counting = None
        if step + 1 in self.steps:
            self._counting = self.counter()
            self._counting.__enter__()
        return False


def default_callbacks() -> dict[str, Callback]:
    """``conf/callbacks/default.yaml`` for a Trainer built in Python (same classes, their own
    defaults)."""
    return {"log": LogCallback(), "validate": ValidationCallback(),
            "checkpoint": CheckpointCallback()}  # fmt: skip
