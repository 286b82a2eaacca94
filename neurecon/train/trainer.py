"""The training loop. It drives any (scene, field, renderer) without knowing which they are."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from neurecon.data.scene import Scene
from neurecon.errors import ConfigError, MeshExtractionError
from neurecon.geometry import extract_mesh
from neurecon.io import atomic_write, write_json
from neurecon.metrics import chamfer, psnr, sample_surface, ssim
from neurecon.optim import OptimizerFactory
from neurecon.render.common import RenderOutput
from neurecon.train.checkpoint import prune_checkpoints, save_checkpoint
from neurecon.train.losses import color_loss, mask_loss

log = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={device!r} but CUDA is not available here")
    return torch.device(device)


class Trainer:
    """Random-ray training, chunked validation, checkpoints, mesh and final metrics.

    Args:
        max_steps: optimisation steps.  batch_rays: rays per step.
        val_every / val_views: validate on the first ``val_views`` test views every n steps.
        chunk: rays per chunk when rendering full images (bounds peak memory).
        ckpt_every / keep_ckpts: periodic checkpoints in ``checkpoints/``; 0 disables.
        mesh_resolution: marching-cubes grid (0 skips the mesh).
        chamfer_points: points sampled from the mesh for Chamfer distance.
        chamfer_threshold: F-score threshold as a fraction of the object's bounding radius.
        loss: weights ``color``, ``eikonal``, ``mask`` and ``color_type`` (l1 | huber | mse).
        use_mask: use the scene's masks (masked colour loss + mask BCE) when it has them.
        objective: metric key returned to Hydra / Optuna.
        progress: show a tqdm bar.  seed, device (auto | cpu | cuda[:i]).
    """

    def __init__(
        self,
        max_steps: int = 2000,
        batch_rays: int = 512,
        val_every: int = 1000,
        val_views: int = 1,
        chunk: int = 2048,
        ckpt_every: int = 1000,
        keep_ckpts: int = 2,
        log_every: int = 50,
        mesh_resolution: int = 128,
        chamfer_points: int = 100_000,
        chamfer_threshold: float = 0.01,
        loss: Mapping[str, Any] | None = None,
        use_mask: bool = True,
        objective: str = "test/psnr",
        progress: bool = True,
        seed: int = 0,
        device: str = "auto",
    ) -> None:
        for key, val in (("max_steps", max_steps), ("batch_rays", batch_rays), ("chunk", chunk)):
            if int(val) < 1:
                raise ConfigError(f"trainer.{key} must be >= 1, got {val}")
        if mesh_resolution and mesh_resolution < 8:
            raise ConfigError(f"trainer.mesh_resolution must be 0 or >= 8, got {mesh_resolution}")
        self.max_steps, self.batch_rays, self.chunk = int(max_steps), int(batch_rays), int(chunk)
        self.val_every, self.val_views = val_every, val_views
        self.ckpt_every, self.keep_ckpts, self.log_every = ckpt_every, keep_ckpts, log_every
        self.mesh_resolution, self.chamfer_points = mesh_resolution, chamfer_points
        self.chamfer_threshold = chamfer_threshold
        w = {"color": 1.0, "eikonal": 0.1, "mask": 0.1, "color_type": "l1"}
        unknown = set(loss or {}) - set(w)
        if unknown:
            raise ConfigError(f"trainer.loss: unknown key(s) {sorted(unknown)}; known {sorted(w)}")
        w.update(dict(loss or {}))
        self.w = w
        self.use_mask, self.objective, self.progress = use_mask, objective, progress
        self.seed, self.device = seed, resolve_device(device)
        self.skipped_steps = 0
        self.history: list[dict[str, float]] = []  # logged every ``log_every`` steps

    # ------------------------------------------------------------------ training
    def _losses(self, out: RenderOutput, rgb: torch.Tensor, mask: torch.Tensor | None):
        terms = {"color": color_loss(out.color, rgb, self.w["color_type"], mask)}
        if out.eikonal is not None and self.w["eikonal"] > 0:
            terms["eikonal"] = out.eikonal
        if mask is not None and self.w["mask"] > 0:
            terms["mask"] = mask_loss(out.opacity, mask)
        total = sum(self.w[k] * v for k, v in terms.items())
        return total, terms

    def _step_ok(self, loss: torch.Tensor, model: nn.Module) -> bool:
        """First NaN guard: a non-finite loss or gradient skips the step (counted)."""
        if not torch.isfinite(loss):
            return False
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) if grads else True

    def fit(
        self,
        scene: Scene,
        field: nn.Module,
        renderer: nn.Module,
        optimizer: OptimizerFactory,
        out_dir: str | Path,
    ) -> dict[str, Any]:
        """Train; write checkpoints, ``mesh.ply`` (world) and ``metrics.json`` to ``out_dir``."""
        out = Path(out_dir)
        torch.manual_seed(self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        field.to(self.device)
        renderer.to(self.device)
        bg = scene.background.to(self.device)
        use_mask = self.use_mask and scene.masks is not None
        opt, sched = optimizer.build(field, self.max_steps)
        t0 = time.time()
        samples = 0
        bar = tqdm(range(1, self.max_steps + 1), disable=not self.progress, desc="train")
        for step in bar:
            field.train()
            renderer.train()
            if hasattr(renderer, "update_step"):
                renderer.update_step(step)
            batch = scene.sample_rays(self.batch_rays, gen, self.device)
            r = renderer(field, batch.origins, batch.dirs, bg)
            mask = batch.mask if use_mask else None
            loss, terms = self._losses(r, batch.rgb, mask)
            opt.zero_grad(set_to_none=True)
            if torch.isfinite(loss):
                loss.backward()
            if self._step_ok(loss, field):
                opt.step()
            else:
                self.skipped_steps += 1
                log.warning("step %d: non-finite loss or gradient, step skipped", step)
            sched.step()
            samples += r.num_samples
            if step % self.log_every == 0 or step == self.max_steps:
                train_psnr = -10 * math.log10(
                    max(((r.color - batch.rgb) ** 2).mean().item(), 1e-10)
                )
                post = {"loss": f"{loss.item():.4f}", "psnr": f"{train_psnr:.2f}"}
                if "inv_s" in r.extras:
                    post["inv_s"] = f"{r.extras['inv_s'].item():.1f}"
                post["lr"] = f"{opt.param_groups[0]['lr']:.2e}"
                bar.set_postfix(post)
                row = {"step": step, "loss": loss.item(), "train/psnr": train_psnr}
                row.update({f"loss/{k}": v.item() for k, v in terms.items()})
                if "inv_s" in r.extras:
                    row["inv_s"] = r.extras["inv_s"].item()
                self.history.append(row)
                log.debug("step %d %s", step, row)
            if self.val_every and step % self.val_every == 0 and step < self.max_steps:
                self._validate(scene, field, renderer, out / "val", step)
            if self.ckpt_every and step % self.ckpt_every == 0:
                self._save(out, step, field, opt, sched)
        train_time = time.time() - t0
        self._save(out, self.max_steps, field, opt, sched)

        metrics: dict[str, Any] = {
            "status": "completed",
            "scene": scene.name,
            "steps": self.max_steps,
            "train_time_s": train_time,
            "samples_per_s": samples / max(train_time, 1e-9),
            "guard/skipped_steps": self.skipped_steps,
        }
        if self.history:
            metrics.update({f"final/{k}": v for k, v in self.history[-1].items() if k != "step"})
        metrics.update(self._validate(scene, field, renderer, out / "test", None))
        metrics.update(self._mesh_metrics(scene, field, out))
        metrics["total_time_s"] = time.time() - t0
        write_json(out / "metrics.json", metrics)
        summary = {k: v for k, v in metrics.items() if not isinstance(v, list | dict)}
        log.info("metrics: %s", summary)
        return metrics

    def _save(self, out: Path, step: int, field: nn.Module, opt, sched) -> None:
        state = {
            "step": step,
            "field": field.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
        }
        save_checkpoint(out / "checkpoints" / f"step_{step:07d}.ckpt", state)
        prune_checkpoints(out / "checkpoints", max(1, self.keep_ckpts))

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def render_view(
        self, scene: Scene, field: nn.Module, renderer: nn.Module, view: int
    ) -> dict[str, np.ndarray]:
        """Full-image render in chunks of ``chunk`` rays (peak memory independent of image size).

        Returns (H, W, 3) ``color`` / ``normal`` and (H, W) ``opacity`` / ``depth`` arrays.
        """
        field.eval()
        renderer.eval()
        H, W = scene.hw
        bg = scene.background.to(self.device)
        parts: dict[str, list[torch.Tensor]] = {
            "color": [],
            "opacity": [],
            "depth": [],
            "normal": [],
        }
        for batch in scene.view_rays(view, self.chunk, self.device):
            r = renderer(field, batch.origins, batch.dirs, bg)
            parts["color"].append(r.color.cpu())
            parts["opacity"].append(r.opacity.cpu())
            parts["depth"].append(r.depth.cpu())
            normal = r.normal if r.normal is not None else torch.zeros_like(r.color)
            parts["normal"].append(normal.cpu())
        shapes = {"color": (H, W, 3), "normal": (H, W, 3), "opacity": (H, W), "depth": (H, W)}
        return {k: torch.cat(v).reshape(shapes[k]).numpy() for k, v in parts.items()}

    def _validate(
        self, scene: Scene, field: nn.Module, renderer: nn.Module, folder: Path, step: int | None
    ) -> dict[str, Any]:
        """PSNR / SSIM on test views; writes ``pred | gt | normal`` images to ``folder``."""
        views = scene.test_ids.tolist()
        if step is not None:
            views = views[: max(1, self.val_views)]
        per_view = []
        for v in tqdm(views, disable=not self.progress, desc="render", leave=False):
            img = self.render_view(scene, field, renderer, v)
            gt, m = scene.image(v), scene.mask(v)
            pred = np.clip(img["color"], 0, 1)
            row = {"view": v, "psnr": psnr(pred, gt), "ssim": ssim(pred, gt)}
            if m is not None and m.any():
                row["psnr_masked"] = psnr(pred, gt, m)
            per_view.append(row)
            normal = (img["normal"] * 0.5 + 0.5) * img["opacity"][..., None]
            panel = np.concatenate([pred, gt, np.clip(normal, 0, 1)], axis=1)
            name = f"step_{step:07d}_view_{v:03d}.png" if step is not None else f"view_{v:03d}.png"
            atomic_write(
                folder / name, lambda p, a=panel: iio.imwrite(p, (a * 255).astype(np.uint8))
            )
        res: dict[str, Any] = {}
        prefix = "val" if step is not None else "test"
        for key in ("psnr", "ssim", "psnr_masked"):
            vals = [r[key] for r in per_view if key in r]
            if vals:
                res[f"{prefix}/{key}"] = float(np.mean(vals))
        if step is not None:
            log.info("step %d validation: %s", step, res)
        else:
            res["test/per_view"] = per_view
        return res

    def _mesh_metrics(self, scene: Scene, field: nn.Module, out: Path) -> dict[str, Any]:
        """Extract ``mesh.ply`` in world coordinates; Chamfer vs ground truth when known."""
        if not self.mesh_resolution:
            return {}
        field.eval()
        try:
            mesh = extract_mesh(
                field.geometry,
                scene.to_world,
                self.mesh_resolution,
                chunk=self.chunk * 32,
                device=self.device,
            )
        except MeshExtractionError as e:
            log.error("mesh extraction: %s", e)
            return {"mesh_error": str(e)}
        atomic_write(out / "mesh.ply", lambda p: mesh.export(p, file_type="ply"))
        res: dict[str, Any] = {"mesh": "mesh.ply", "mesh/vertices": len(mesh.vertices)}
        if scene.gt_points is not None and len(mesh.faces):
            gt = scene.gt_points
            radius = float(np.linalg.norm(gt - gt.mean(0), axis=1).max())
            pts = sample_surface(mesh, self.chamfer_points, seed=self.seed)
            cd = chamfer(pts, gt, self.chamfer_threshold * radius)
            res.update({f"chamfer/{k}": v for k, v in cd.items()})
            res["chamfer/object_radius"] = radius
            res["chamfer/relative"] = cd["mean"] / radius
        return res
