"""The training loop. It drives any (scene, field, renderer) without knowing which they are:
model figures come from ``field.stats()``, side jobs are callbacks, the run's state is a
:class:`TrainState`, and what follows training is :mod:`neurecon.eval`."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from neurecon.atomic import write_json
from neurecon.data.rays import sample_batch
from neurecon.data.scene import Scene
from neurecon.device import resolve_device
from neurecon.errors import ConfigError
from neurecon.eval import EvalSettings, evaluate_run
from neurecon.eval.budget import EvalReserve
from neurecon.log import NoneLogger
from neurecon.losses import LossTerm, default_terms, total_loss
from neurecon.optim import OptimizerFactory
from neurecon.train.batch import next_ray_count
from neurecon.train.callbacks import Callback, FitContext, default_callbacks
from neurecon.train.checkpoint import checkpoint_to_resume
from neurecon.train.compile import compile_field
from neurecon.train.guard import NaNGuard, TrainingDiverged, scale_lr
from neurecon.train.lock import run_folder_lock
from neurecon.train.state import TrainState

log = logging.getLogger(__name__)
# A run under a deadline keeps the evaluation's time back once this share of the time is left.
RESERVE_AFTER = 0.5

_PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


class Trainer:
    """Random-ray training with a NaN guard; the final evaluation by
    :func:`neurecon.eval.evaluate_run`. Every argument is a ``trainer.*`` key, documented in
    ``conf/trainer/default.yaml``, except: ``evaluation`` (the ``eval`` node's settings,
    :class:`~neurecon.eval.EvalSettings`), ``loss`` (the ``loss`` group's terms,
    :mod:`neurecon.losses`) and ``callbacks`` (the ``callbacks``
    group's objects by name, :mod:`neurecon.train.callbacks`: logging, validation,
    checkpoints, and what a sweep or a SLURM job adds; None: the default ones)."""

    def __init__(
        self,
        max_steps: int = 2000,
        batch_rays: int = 512,
        samples_per_step: int | None = None,
        max_batch_rays: int = 8192,
        loss: Mapping[str, LossTerm] | None = None,
        use_mask: bool | str = "auto",
        objective: str | Sequence[str] = "test/psnr",
        progress: bool = True,
        seed: int = 0,
        device: str = "auto",
        precision: str = "fp32",
        grad_clip: float = 0.0,
        guard: Mapping[str, Any] | None = None,
        resume: str = "never",
        max_time: float | None = None,
        overwrite: bool = False,
        compile: bool = False,
        evaluation: EvalSettings | None = None,
        callbacks: Mapping[str, Callback] | None = None,
    ) -> None:
        for key, val in (("max_steps", max_steps), ("batch_rays", batch_rays)):
            if int(val) < 1:
                raise ConfigError(f"trainer.{key} must be >= 1, got {val}")
        if samples_per_step is not None and (samples_per_step < 1 or max_batch_rays < 1):
            raise ConfigError("trainer.samples_per_step and trainer.max_batch_rays must be >= 1")
        if use_mask not in (True, False, "auto"):
            raise ConfigError(f"trainer.use_mask={use_mask!r}; choose auto, true or false")
        if precision not in _PRECISIONS:
            raise ConfigError(f"trainer.precision={precision!r}; choose from {list(_PRECISIONS)}")
        if resume not in ("never", "auto") and not Path(resume).is_file():
            raise ConfigError(f"trainer.resume: checkpoint {resume} does not exist")
        if max_time is not None and not float(max_time) > 0:
            raise ConfigError(f"trainer.max_time must be > 0 seconds or null, got {max_time}")
        self.max_steps, self.batch_rays = int(max_steps), int(batch_rays)
        self.samples_per_step = None if samples_per_step is None else int(samples_per_step)
        self.max_batch_rays = max(int(max_batch_rays), 1)
        # The objective's terms (the ``loss`` group, built by neurecon.build); a field or
        # renderer adds its own through ``loss_terms()`` at fit time.
        self.loss_terms: dict[str, LossTerm] = dict(default_terms() if loss is None else loss)
        for name, term in self.loss_terms.items():
            if not isinstance(term, LossTerm):
                raise ConfigError(f"loss.{name}: {type(term).__name__} is not a LossTerm")
        self.use_mask, self.progress, self.seed = use_mask, progress, seed
        self.objective = objective if isinstance(objective, str) else list(objective)
        self.device = resolve_device(device)
        if precision != "fp32" and self.device.type != "cuda":
            log.warning("trainer.precision=%s needs CUDA; using fp32 on %s", precision, self.device)
            precision = "fp32"
        self.precision, self.grad_clip = precision, float(grad_clip)
        self.guard = NaNGuard(**dict(guard or {}))  # validates trainer.guard.* now
        self.resume, self.overwrite = resume, overwrite
        self.max_time = None if max_time is None else float(max_time)
        # The eval node (built by neurecon.build); the run decides device, seed and masks.
        self.eval_settings = evaluation if evaluation is not None else EvalSettings()
        es = self.eval_settings
        es.device, es.seed, es.progress, es.use_mask = self.device, seed, progress, use_mask
        named = default_callbacks() if callbacks is None else dict(callbacks)
        for name, cb in named.items():
            if not isinstance(cb, Callback):
                raise ConfigError(f"callbacks.{name}: {type(cb).__name__} is not a Callback")
        self.named_callbacks: dict[str, Callback] = named
        self.callbacks: list[Callback] = []  # this fit's: the named ones, then fit()'s
        self.ctx: FitContext | None = None  # this fit's, for the callbacks
        self.history: list[dict[str, float]] = []  # rows the log callback wrote
        self.logger: Any = NoneLogger()
        self.stop_reason: str | None = None  # set when training ends before max_steps
        self.scaler: torch.amp.GradScaler | None = None  # fp16 only, built in fit
        self.compile, self.compiled, self.compile_s = bool(compile), False, 0.0
        self.step, self.train_time = 0, 0.0
        self.reserve: EvalReserve | None = None  # a run under a deadline: evaluation's time
        self._left_at_start: float | None = None  # seconds to the deadline at the first step

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype of training steps (None: fp32)."""
        return _PRECISIONS[self.precision]

    def _time_up(self, state: TrainState) -> str | None:
        """Why training ends now for time, or None; asked once per step, before the step's
        ``on_step_end`` callbacks. ``max_time`` and a callback's deadline bound the whole run:
        training ends when what is left is what the evaluation will take
        (:class:`~neurecon.eval.budget.EvalReserve`, timed on the current field)."""
        left = math.inf if self.max_time is None else self.max_time - state.elapsed
        deadlines = [d for cb in self.callbacks if (d := cb.deadline()) is not None]
        if deadlines:
            left = min(left, min(deadlines) - time.time())
        if math.isfinite(left):
            if self._left_at_start is None:
                self._left_at_start = left
            # An early field's evaluation is not the one that will run (an untrained field on
            # DTU scan37 timed at 480-4600 s, the trained one took 104 s): the reserve applies
            # once half of the time is spent.
            if left > RESERVE_AFTER * self._left_at_start:
                return self._callbacks_stop()
            if self.reserve is None:
                self.reserve = EvalReserve(self.scene, self.eval_settings)
            t = time.time()
            kept = self.reserve.update(left, state.field, state.renderer, self.device)
            left -= time.time() - t  # a timing takes its share of the budget too
            if left <= kept:
                if kept > left + 1.0 and self.reserve.timings == 1:  # the very first timing
                    log.warning(
                        "the evaluation is estimated at %.0f s on the current field, more than "
                        "the %.0f s left: the run will end about %.0f s after its deadline "
                        "(dataset.test_every and eval.mesh_resolution set the evaluation's work)",
                        kept, left, kept - left,
                    )  # fmt: skip
                by_max_time = self.max_time is not None and self.max_time - state.elapsed <= kept
                what = (
                    f"trainer.max_time={self.max_time:g}s reached at step {state.step}"
                    if by_max_time
                    else f"the job's time limit is near: stopped at step {state.step}"
                )
                return f"{what} ({kept:.1f} s kept for the evaluation)"
        return self._callbacks_stop()

    def _callbacks_stop(self) -> str | None:
        return next((r for r in (cb.should_stop(self.ctx) for cb in self.callbacks) if r), None)

    def fit(
        self,
        scene: Scene,
        field: nn.Module,
        renderer: nn.Module,
        optimizer: OptimizerFactory,
        out_dir: str | Path,
        logger: Any = None,
        callbacks: Sequence[Callback] = (),
    ) -> dict[str, Any]:
        """Train; write checkpoints, ``mesh.ply`` (world) and ``metrics.json`` to ``out_dir``.
        Raises :class:`TrainingDiverged` (after writing a ``diverged`` metrics.json)."""
        with run_folder_lock(out_dir):  # one writer per run folder
            return self._fit(scene, field, renderer, optimizer, Path(out_dir), logger, callbacks)

    def _fit(self, scene, field, renderer, optimizer, out: Path, logger, callbacks) -> dict:
        self.logger = logger if logger is not None else NoneLogger()
        if self.use_mask is True and scene.masks is None:
            raise ConfigError(
                f"trainer.use_mask=true but scene {scene.name!r} has no masks (a mask/ folder, "
                "alpha, or dataset.use_mask=true); use trainer.use_mask=auto or false"
            )
        resume_from = checkpoint_to_resume(out, self.resume, self.overwrite)
        torch.manual_seed(self.seed)
        # The pixels where the step runs (dataset.device), drawn by a generator of that device.
        self.store = scene.training_store(self.device)
        gen = torch.Generator(self.store.draw_device).manual_seed(self.seed)
        field.to(self.device)
        renderer.to(self.device)
        self.compiled = self.compile and compile_field(field)
        # May build CUDA kernels (before the training clock starts); a masked run's grid is
        # carved by the masks' visual hull (a resumed run restores its carved grid below).
        renderer.setup(self.device, scene.visual_hull if self.use_mask is not False else None)
        opt, sched = optimizer.build(field, self.max_steps)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        state = TrainState(field, renderer, opt, sched, gen, self.scaler, self.guard)
        state.rays = self.batch_rays
        if resume_from is not None:
            state.restore(resume_from, self.device)
            log.info("resumed from %s at step %d", resume_from, state.step)
        self.callbacks = [*self.named_callbacks.values(), *callbacks]
        self.history = []
        self.ctx = FitContext(
            state, scene, self.eval_settings, self.logger, out, self.max_steps, self.guard,
            self.history, callbacks=self.callbacks,
        )  # fmt: skip
        self.scene = scene
        self.reserve, self._left_at_start = None, None
        try:
            self._train_loop(state, out)
        except TrainingDiverged as e:
            m = self._base_metrics(scene, "diverged", str(e))
            write_json(out / "metrics.json", m)
            self.logger.log_summary(m)
            raise
        metrics = self._base_metrics(scene, "time_limit" if self.stop_reason else "completed")
        metrics.update({"stop_reason": self.stop_reason} if self.stop_reason else {})
        metrics["train_time_s"] = self.train_time
        for module in (*field.modules(), *renderer.modules()):  # which backends really ran
            metrics.update(getattr(module, "backend_report", dict)())
        if self.compiled:
            metrics["compile_s"] = self.compile_s
        metrics = evaluate_run(
            scene, field, renderer, out, self.eval_settings, metrics, self.logger, self.max_steps
        )
        self.logger.log_metrics(self.max_steps, metrics)
        self.logger.log_summary(metrics)
        return metrics

    def _base_metrics(self, scene: Scene, status: str, error: str | None = None) -> dict[str, Any]:
        m: dict[str, Any] = {"status": status, "scene": scene.name, "steps": self.step}
        # Which GPU this run had: a launcher that hands each trial its own (Ray) sets it.
        m["device"] = str(self.device)
        m["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
        if self.reserve is not None:  # compare with eval_time_s
            m["eval_reserve_s"] = self.reserve.seconds
        if error:
            m["error"] = error
        m.update(self.guard.counters())
        m["guard/log"] = [e.as_dict() for e in self.guard.events]
        if self.history:
            m.update({f"final/{k}": v for k, v in self.history[-1].items() if k != "step"})
            m["samples_per_s"] = self.history[-1].get("samples_per_s", 0.0)
        return m

    def _train_loop(self, state: TrainState, out: Path) -> None:
        """Optimise from ``state.step`` to ``max_steps``, ``max_time`` or a callback's stop;
        sets ``self.train_time`` (seconds, earlier sessions included) and ``self.step``."""
        scene, field, renderer = self.scene, state.field, state.renderer
        sched = state.scheduler
        bg = scene.background_color.to(self.device)
        use_mask = self.use_mask is not False and scene.masks is not None
        amp_dtype = self.amp_dtype
        state.t0, samples_total = time.time(), 0
        self.step, self.stop_reason = state.step, None
        self.bar = tqdm(
            total=self.max_steps, initial=state.step, disable=not self.progress, desc="train"
        )
        ctx = self.ctx
        ctx.bar = self.bar
        for cb in self.callbacks:
            cb.on_fit_start(ctx)
        scheduled = [m for m in field.modules() if callable(getattr(m, "update_step", None))]
        objective = dict(self.loss_terms)
        for module in (field, renderer):  # terms a field or renderer contributes
            objective.update(getattr(module, "loss_terms", dict)())
        for term in objective.values():  # what a term reads beyond the batch (SfM points...)
            term.bind(self.scene, field)
        first = True
        while state.step < self.max_steps:
            state.step += 1
            t_step = time.time()
            field.train()
            renderer.train()
            renderer.update_step(state.step, field)
            for m in scheduled:  # e.g. a hash grid's coarse-to-fine levels
                m.update_step(state.step)
            batch = sample_batch(self.store, state.rays, state.generator)
            with torch.autocast(self.device.type, amp_dtype, enabled=amp_dtype is not None):
                r = renderer(field, batch.origins, batch.dirs, bg)
            loss, terms = total_loss(
                objective, r, batch.rgb, batch.mask if use_mask else None, state.step, batch
            )
            for cb in self.callbacks:
                loss = cb.on_loss(ctx, loss)
            cause = self._optimize(state, loss)
            sched.step()
            if cause is not None and self._roll_back(state, cause):
                continue
            samples_total += r.num_samples
            if self.samples_per_step is not None:  # dynamic batch
                state.rays = next_ray_count(
                    state.rays, r.num_samples, self.samples_per_step, self.max_batch_rays
                )
            if first and self.compiled:  # the first step compiles: report it, not as training
                self.compile_s = time.time() - t_step
                state.t0 += self.compile_s
                log.info("trainer.compile: first step %.1f s (compilation)", self.compile_s)
            first = False
            self.bar.update(1)
            self.step = state.step
            stats = {"samples": r.num_samples, "rays": len(batch), "loss": loss, "terms": terms,
                     "render": r, "batch": batch, "samples_total": samples_total,
                     "mask": batch.mask if use_mask else None}  # fmt: skip
            if ctx.stop_reason is None and state.step < self.max_steps:
                ctx.stop_reason = self.stop_reason = self._time_up(state)
                if self.stop_reason:
                    log.warning("%s of %d: stopping training", self.stop_reason, self.max_steps)
            stop = [cb.on_step_end(ctx, stats) for cb in self.callbacks]
            ending = ctx.last_step or any(stop)
            # Training ends with a checked state: the last update is verified here (a roll
            # back goes on training when steps and time are left).
            if ending and (self._verify_last_update(state) or self.stop_reason or any(stop)):
                break
        self.bar.close()
        self.train_time = state.elapsed

    def _optimize(self, state: TrainState, loss: torch.Tensor) -> str | None:
        """Backward, the NaN guard's check and the optimizer step; what went wrong (loss | grad
        | param) or None. The check is the step's one host sync (:meth:`NaNGuard.step_flags`):
        a non-finite parameter left by the previous update is found here, one step later, and
        the guard's snapshot is taken here, where the state is known finite."""
        opt, field, scaler = state.optimizer, state.field, self.scaler
        opt.zero_grad(set_to_none=True)
        if loss.requires_grad:  # False when no ray met an occupied cell: nothing to learn
            # Only the optimised tensors: without ``inputs`` autograd also fills ``x.grad`` for
            # every sample position the SDF's gradient was taken at (a pass through the encoder
            # for nothing; the hash grid's is as costly as its forward on a CPU).
            params = [p for g in opt.param_groups for p in g["params"] if p.requires_grad]
            (loss if scaler is None else scaler.scale(loss)).backward(inputs=params)
            for cb in self.callbacks:
                cb.on_after_backward(self.ctx)
            if scaler is not None:
                scaler.unscale_(opt)  # records the scaler's inf check on the device, no sync
        loss_bad, grad_bad, param_bad = self.guard.step_flags(loss, field)
        cause = "param" if param_bad else "loss" if loss_bad else "grad" if grad_bad else None
        if cause is not None:  # param: the previous update broke a key parameter (roll back)
            if scaler is not None and loss.requires_grad:
                # Every unscale_ needs its update() before the next one; after non-finite
                # gradients it backs the loss scale off.
                scaler.update()
                if cause == "grad" and scaler.get_scale() >= 1.0:  # a sync, on bad steps only
                    # Overflow calibration, not a bad step: the NaN guard counts a non-finite
                    # gradient only once the scale is below 1, where it is non-finite at its
                    # own size (else a persistent NaN gradient would skip every step and end
                    # "completed").
                    return None
            return cause
        # The parameters are the previous step's, known finite: the guard's snapshot point.
        self.guard.good_step(state.step - 1, lambda: state.state_dict(step=state.step - 1))
        if not loss.requires_grad:
            return None
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(field.parameters(), self.grad_clip)
        opt.step()  # fp16 too: the gradients are unscaled and finite (GradScaler.step would
        if scaler is not None:  # only read its inf check back to learn what we know)
            scaler.update()
        broken = [cb.on_after_optimizer_step(self.ctx) for cb in self.callbacks]
        return "param" if any(broken) else None

    def _verify_last_update(self, state: TrainState) -> bool:
        """Whether the last update left the key parameters finite (the step's own check only
        sees the previous one's). If not, the guard rolls back (:meth:`_roll_back`); False."""
        if self.ctx.key_params_finite():
            return True
        self._roll_back(state, "param")
        return False

    def _roll_back(self, state: TrainState, cause: str) -> bool:
        """A bad step: the guard skips it (False) or rolls back model, optimizer and schedule
        and slows down (True); raises :class:`TrainingDiverged` when out of rollbacks."""
        snap = self.guard.bad_step(state.step, cause)
        if snap is None:
            return False
        state.load_state_dict(snap.state, rng=False)
        # Compounds over rollbacks, even when restoring the same snapshot again.
        scale_lr(state.optimizer, state.scheduler, self.guard.lr_scale / snap.lr_scale)
        self.bar.n = state.step
        self.bar.refresh()
        return True
