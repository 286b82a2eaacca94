"""Side jobs around the training loop, behind one small interface.

The loop (``Trainer._train_loop``) optimises; everything else — logging, validation, pruning
reports, checkpoints — is a :class:`Callback`. Users add their own through
``trainer.callbacks`` (a mapping of name → ``_target_`` node) or ``Trainer.fit(callbacks=...)``;
tests inject faults the same way (``tests/faults.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from neurecon.device import HostSyncCounter
from neurecon.eval import score_views
from neurecon.metrics import psnr

if TYPE_CHECKING:
    from neurecon.train.state import TrainState
    from neurecon.train.trainer import Trainer

log = logging.getLogger(__name__)


class Callback:
    """Hooks, in the order the loop calls them in one iteration. Defaults do nothing.

    ``stats`` (``on_step_end``): ``samples`` (field evaluations this step), ``rays``, ``loss``,
    ``terms`` (loss terms), ``render`` (the RenderOutput), ``batch`` (the RayBatch),
    ``samples_total`` (this session's field evaluations so far).
    """

    def on_fit_start(self, trainer: Trainer, state: TrainState, out: Path) -> None:
        """Before the first step (after a resume, at the resumed step)."""

    def on_loss(self, trainer: Trainer, state: TrainState, loss: Tensor) -> Tensor:
        """May replace the step's loss (fault injection)."""
        return loss

    def on_after_backward(self, trainer: Trainer, state: TrainState) -> None:
        """Gradients exist, before any check or optimizer step."""

    def on_after_optimizer_step(self, trainer: Trainer, state: TrainState) -> bool:
        """After the optimizer step; True marks a broken parameter (the guard rolls back)."""
        return False

    def on_validation_end(self, trainer: Trainer, state: TrainState, res: dict) -> None:
        """After a periodic validation with its ``val/*`` figures."""

    def on_step_end(self, trainer: Trainer, state: TrainState, stats: dict[str, Any]) -> bool:
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


class LogCallback(Callback):
    """Every ``every`` steps (and the last): a row of loss terms, train PSNR, learning rates,
    the field's own figures (``field.stats()``), throughput and guard counters, to the logger,
    ``trainer.history`` and the progress bar."""

    def __init__(self, every: int) -> None:
        self.every = every

    def on_step_end(self, trainer: Trainer, state: TrainState, stats: dict[str, Any]) -> bool:
        step = state.step
        if not (step % self.every == 0 or step == trainer.max_steps):
            return False
        r, batch, loss, opt = stats["render"], stats["batch"], stats["loss"], state.optimizer
        row = {"step": step, "loss": loss.item(),
               **train_psnr(r.color.float(), batch.rgb, stats.get("mask"))}  # fmt: skip
        row.update({f"loss/{k}": v.item() for k, v in stats["terms"].items()})
        row.update({f"lr/{g.get('name', i)}": g["lr"] for i, g in enumerate(opt.param_groups)})
        row.update(state.field.stats())
        row["samples_per_s"] = stats["samples_total"] / (time.time() - state.t0)
        row.update(trainer.guard.counters())
        trainer.history.append(row)
        trainer.logger.log_metrics(step, row)
        post = {"loss": f"{row['loss']:.4f}", "psnr": f"{row['train/psnr']:.2f}"}
        if "inv_s" in row:
            post["inv_s"] = f"{row['inv_s']:.1f}"
        post["lr"] = f"{row.get('lr/network', opt.param_groups[0]['lr']):.2e}"  # the main group
        trainer.bar.set_postfix(post)
        log.debug("step %d %s", step, row)
        return False


class ValidationCallback(Callback):
    """Every ``every`` steps (not the last: the final evaluation follows), PSNR / SSIM on the
    first ``views`` test views, panels to ``out/val`` and to the logger."""

    def __init__(self, every: int, views: int) -> None:
        self.every, self.views = every, views
        self.out = Path(".")

    def on_fit_start(self, trainer: Trainer, state: TrainState, out: Path) -> None:
        self.out = out / "val"

    def on_step_end(self, trainer: Trainer, state: TrainState, stats: dict[str, Any]) -> bool:
        step = state.step
        if not (self.every and step % self.every == 0 and step < trainer.max_steps):
            return False
        if not trainer.guard.key_params_finite(state.field):
            return False  # the last update broke it: the next step's check rolls it back
        scene = trainer.scene
        views = scene.test_ids.tolist()[: max(1, self.views)]
        names = [f"step_{step:07d}_view_{v:03d}.png" for v in views]
        res, _, panels = score_views(
            scene, state.field, state.renderer, views, trainer.eval_settings, self.out, "val",
            names, with_lpips=False,
        )  # fmt: skip
        log.info("step %d validation: %s", step, res)
        trainer.logger.log_metrics(step, res)
        trainer.logger.log_images(step, panels)
        for cb in trainer.callbacks:
            cb.on_validation_end(trainer, state, res)
        return False


class PruningCallback(Callback):
    """Reports each validation to the Optuna trial (``trainer.pruning``), which may stop it."""

    def __init__(self, reporter: Any, metric: str = "val/psnr") -> None:
        self.reporter, self.metric = reporter, metric

    def on_validation_end(self, trainer: Trainer, state: TrainState, res: dict) -> None:
        self.reporter.report(state.step, res[self.metric])


class CheckpointCallback(Callback):
    """Every ``every`` steps, at the last step and when the time budget ends training:
    ``out/checkpoints/step_*.ckpt`` (atomic), the newest ``keep`` kept."""

    def __init__(self, every: int, keep: int) -> None:
        self.every, self.keep = every, keep
        self.folder = Path("checkpoints")

    def on_fit_start(self, trainer: Trainer, state: TrainState, out: Path) -> None:
        self.folder = out / "checkpoints"

    def on_step_end(self, trainer: Trainer, state: TrainState, stats: dict[str, Any]) -> bool:
        step = state.step
        last = step == trainer.max_steps or trainer.out_of_time(state)
        if (self.every and step % self.every == 0) or last:
            # The step's own check saw the previous update; a checkpoint is of a checked state
            # (a broken one is not saved: the next step's check rolls it back).
            if trainer.guard.key_params_finite(state.field):
                state.save(self.folder, self.keep)
            else:
                log.warning("step %d: a key parameter is non-finite; checkpoint not saved", step)
        return False


class SyncCountCallback(Callback):
    """Counts, for the loop iterations ending at ``steps``, the calls that would make the host
    wait for the device (:class:`~neurecon.device.HostSyncCounter`): from the end of the
    previous step to the end of this one, every other callback of the step included (add it
    last). ``per_step``: {step: [(call, "file:line")]}. For finding a sync that slows a GPU
    run: ``+trainer.callbacks.syncs._target_=neurecon.train.callbacks.SyncCountCallback
    +trainer.callbacks.syncs.steps=[101,102]``."""

    def __init__(self, steps: Sequence[int] = (101, 102)) -> None:
        self.steps, self.per_step = set(steps), {}
        self._counter: HostSyncCounter | None = None

    def on_step_end(self, trainer: Trainer, state: TrainState, stats: dict[str, Any]) -> bool:
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.per_step[state.step] = self._counter.calls
            log.info(
                "step %d: %d host syncs %s", state.step, len(self._counter), self._counter.calls
            )
            self._counter = None
        if state.step + 1 in self.steps:
            self._counter = HostSyncCounter()
            self._counter.__enter__()
        return False
