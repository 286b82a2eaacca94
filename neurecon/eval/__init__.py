"""Everything after training, as functions of (scene, field, renderer): render a view, score
views, extract and score the mesh, write ``metrics.json``. The trainer, ``evaluate.py``,
``neurecon.bench`` and export paths all call these; none of them needs a Trainer."""

from neurecon.eval.mesh import mesh_metrics
from neurecon.eval.run import evaluate_run
from neurecon.eval.settings import EvalConfig, EvalSettings
from neurecon.eval.views import render_view, score_views

__all__ = [
    "EvalConfig",
    "EvalSettings",
    "evaluate_run",
    "mesh_metrics",
    "render_view",
    "score_views",
]
