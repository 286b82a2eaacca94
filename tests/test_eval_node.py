"""The eval node and its metric objects: a new metric is one class and one YAML node; the
tables, the summary and score_views read the objects; old run folders still open."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from typing import ClassVar

import numpy as np
from conftest import TINY, compose_cfg, trained_run_folder
from hydra.utils import instantiate
from omegaconf import OmegaConf

from neurecon.build import build
from neurecon.eval.summary import run_summary
from neurecon.eval.tables import RunRecord, build_table, table_figures
from neurecon.metrics.nodes import ViewImages, ViewMetric, default_metrics


@dataclasses.dataclass
class MeanAbsoluteError(ViewMetric):
    """A user's metric, added as ``+eval.metrics.mae._target_=test_eval_node.MeanAbsoluteError``:
    the mean absolute colour error over the scored pixels."""

    name: ClassVar[str] = "mae"
    label: ClassVar[str] = "MAE"
    higher_is_better: ClassVar[bool] = False

    def score(self, view: ViewImages) -> float | None:
        err = np.abs(view.pred - view.gt).mean(-1)
        return float(err.mean() if view.valid is None else err[view.valid].mean())


def test_a_new_metric_is_one_class_and_one_yaml_node(tmp_path):
    cfg = compose_cfg([*TINY, "dataset.shape=sphere", "trainer.max_steps=20",
                       "eval.mesh_resolution=0",
                       "+eval.metrics.mae._target_=test_eval_node.MeanAbsoluteError"])  # fmt: skip
    run = build(cfg)
    m = run.trainer.fit(run.scene, run.field, run.renderer, run.optimizer, tmp_path)
    rows = m["test/per_view"]
    assert len(rows) == len(run.scene.test_ids) and all("mae" in r for r in rows)
    assert math.isclose(m["test/mae"], np.mean([r["mae"] for r in rows]))
    # An independent bound on the same images: MSE >= MAE^2 per channel mean (Jensen), so
    # each view's PSNR is at most -10 log10(MAE^2), and a render is not perfect after 20 steps.
    for r in rows:
        assert 0.01 < r["mae"] < 1 and r["psnr"] <= -10 * math.log10(r["mae"] ** 2) + 1e-6
    assert json.loads((tmp_path / "metrics.json").read_text())["test/mae"] == m["test/mae"]
    # The table and the summary take its figure from the object: label, direction, format.
    figures = table_figures(run.trainer.eval_settings.metrics)
    header, table, _ = build_table([RunRecord(tmp_path, m, label="mine")], figures)
    assert "MAE↓" in header and table[0][header.index("MAE↓")] == f"{m['test/mae']:.3f}"
    assert f"MAE {m['test/mae']:.3f}" in run_summary(m, tmp_path, run.trainer.eval_settings.metrics)


def test_the_default_metrics_in_python_are_the_yaml_nodes():
    """default_metrics() (settings made in Python) and conf/eval/default.yaml agree."""
    nodes = compose_cfg([]).eval.metrics
    built = {k: instantiate(v) for k, v in nodes.items()}
    assert built == default_metrics()


def test_a_run_folder_saved_before_the_eval_and_callbacks_nodes_still_opens(tmp_path):
    """Earlier releases: trainer.{chunk,mesh_resolution,chamfer_*,val_every,...}, a metrics
    group, trainer.callbacks (a user's class, never built by an evaluation), trainer.pruning."""
    from neurecon.runs import build_run

    run = tmp_path / "old"
    trained_run_folder(run, [*TINY, "dataset.shape=sphere", "trainer.max_steps=2"])
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    del cfg["eval"], cfg["callbacks"]
    cfg.trainer.update({"chunk": 1024, "mesh_resolution": 40, "chamfer_points": 5000,
                        "chamfer_threshold": 0.02, "video_frames": 0, "val_every": 10,
                        "ckpt_every": 10, "log_every": 5, "pruning": None,
                        "callbacks": {"mine": {"_target_": "my_pkg.MyCallback"}}})  # fmt: skip
    cfg.metrics = {"lpips_net": None, "dtu_gt_root": None, "dtu_scan": None,
                   "dtu_protocol": "monosdf", "dtu_mask_dilate": None}  # fmt: skip
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    _, settings = build_run(run)
    assert (settings.chunk, settings.mesh_resolution) == (1024, 40)
    chamfer, lpips, dtu = (settings.metrics[k] for k in ("chamfer", "lpips", "dtu"))
    assert (chamfer.points, chamfer.threshold, lpips.net) == (5000, 0.02, None)
    assert dtu.protocol == "monosdf" and set(settings.metrics) == set(default_metrics())
    shutil.rmtree(run)
