"""The objective as ``_target_`` nodes: a new term is one file and one YAML node; terms are
removed, scheduled and typed from config; run folders saved with ``trainer.loss`` still open."""

from __future__ import annotations

import math
import shutil
import sys

import pytest
import torch
from conftest import TINY, compose_cfg, trained_run_folder
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from neurecon.build import build, loss_terms
from neurecon.losses import ColorLoss, EikonalLoss, LossTerm, MaskLoss, total_loss

# A user's own term, as they would write it in their package: one file.
TERM_FILE = '''
from dataclasses import dataclass

from neurecon.losses import LossTerm


@dataclass
class NormalConsistency(LossTerm):
    """L1 between the length of each ray's rendered normal and its opacity: the length of a
    weighted mean of unit normals equals the weight sum only when they agree along the ray."""

    def value(self, out, rgb, mask):
        if out.normal is None:
            return None
        return (out.opacity - out.normal.norm(dim=-1)).abs().mean()
'''
# ... and one YAML node, here in a preset of their own.
PRESET = """# @package _global_
loss:
  normal_consistency:
    _target_: normal_terms.NormalConsistency
    weight: 0.05
"""


def test_a_new_term_is_one_file_and_one_yaml_node(tmp_path, monkeypatch):
    (tmp_path / "normal_terms.py").write_text(TERM_FILE)
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "normals.yaml").write_text(PRESET)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = compose_cfg([*TINY, "dataset.shape=sphere", "trainer.max_steps=20",
                       "callbacks.log.every=10", f"hydra.searchpath=[file://{tmp_path}]",
                       "experiment=normals"])  # fmt: skip
    run = build(cfg)
    assert list(run.trainer.loss_terms) == [
        "color",
        "eikonal",
        "mask",
        "free_space",
        "normal_consistency",
    ]
    m = run.trainer.fit(run.scene, run.field, run.renderer, run.optimizer, tmp_path / "run")
    assert m["status"] == "completed"
    for row in run.trainer.history:  # logged, and part of the total the optimiser saw
        value = row["loss/normal_consistency"]
        assert math.isfinite(value) and value > 0
        weights = {k: t.weight for k, t in run.trainer.loss_terms.items()}
        total = sum(w * row[f"loss/{k}"] for k, w in weights.items() if f"loss/{k}" in row)
        assert row["loss"] == pytest.approx(total, rel=1e-5)
    sys.modules.pop("normal_terms", None)


class _MeanOpacity(LossTerm):
    def value(self, out, rgb, mask):
        return out.opacity.mean()


def test_a_renderer_contributes_terms_of_its_own(tmp_path):
    run = build(compose_cfg([*TINY, "dataset.shape=sphere", "trainer.max_steps=10",
                             "callbacks.log.every=5"]))  # fmt: skip
    run.renderer.loss_terms = lambda: {"opacity": _MeanOpacity(weight=1e-3)}
    run.trainer.fit(run.scene, run.field, run.renderer, run.optimizer, tmp_path)
    assert all(0 < row["loss/opacity"] <= 1 for row in run.trainer.history)


def test_terms_are_dropped_weighted_and_scheduled_from_the_command_line():
    terms = loss_terms(compose_cfg(["~loss.mask", "loss.eikonal.warmup_steps=100"]))
    assert list(terms) == ["color", "eikonal", "free_space"]
    eik = terms["eikonal"]
    assert [eik.weight_at(s) for s in (0, 50, 100, 500)] == pytest.approx([0, 0.05, 0.1, 0.1])
    with pytest.raises(ConfigCompositionException, match="warmup_step"):
        compose_cfg(["loss.eikonal.warmup_step=100"])  # typed: a misspelt key fails


def test_total_loss_is_the_weighted_sum_of_the_terms_that_apply():
    g = torch.Generator().manual_seed(0)
    out = type("Out", (), {})()
    out.color, out.opacity = torch.rand(32, 3, generator=g), torch.rand(32, generator=g)
    out.eikonal = torch.tensor(0.25)
    rgb, mask = torch.rand(32, 3, generator=g), (torch.rand(32, generator=g) > 0.5).float()
    terms = {"color": ColorLoss(), "eikonal": EikonalLoss(weight=0.2), "mask": MaskLoss(0.3)}
    total, values = total_loss(terms, out, rgb, mask)
    bce = torch.nn.functional.binary_cross_entropy(out.opacity.clamp(1e-3, 1 - 1e-3), mask)
    want = values["color"] + 0.2 * 0.25 + 0.3 * bce
    torch.testing.assert_close(total, want)
    _, unmasked = total_loss(terms, out, rgb, None)
    assert set(unmasked) == {"color", "eikonal"}  # no mask, no mask term
    out.eikonal = None  # a density field has no eikonal value
    assert set(total_loss(terms, out, rgb, mask)[1]) == {"color", "mask"}


def test_a_run_folder_saved_with_trainer_loss_still_opens(tmp_path):
    """Before the loss group, the terms were ``trainer.loss.{color,color_type,...}``."""
    from neurecon.runs import load_run_config

    run = tmp_path / "old"
    trained_run_folder(run, [*TINY, "dataset.shape=sphere", "trainer.max_steps=2"])
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    del cfg["loss"]
    cfg.trainer.loss = {"color": 2.0, "color_type": "huber", "color_reduction": "sum",
                        "eikonal": 0.3, "mask": 0.0}  # fmt: skip
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    loaded = load_run_config(run)
    assert "loss" not in loaded.trainer
    terms = loss_terms(loaded)
    assert terms["color"] == ColorLoss(weight=2.0, kind="huber", reduction="sum")
    assert terms["eikonal"].weight == 0.3 and terms["mask"].weight == 0.0
    shutil.rmtree(run)
