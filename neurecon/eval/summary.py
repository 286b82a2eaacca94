"""The few lines a run ends with: what happened, the headline figures, where the files are."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from neurecon.metrics.nodes import Metric, ViewMetric, default_metrics


def _minutes(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


def run_summary(
    metrics: dict[str, Any], out: str | Path, metrics_used: Mapping[str, Metric] | None = None
) -> str:
    """A short human summary of a run's ``metrics`` (as written to ``out/metrics.json``), each
    figure as its metric object says (``metrics_used``: the run's ``eval.metrics``, default
    the built-in ones)."""
    out = Path(out)
    m = metrics
    lines = [
        f"run {m.get('status', '?')}: {m.get('steps', '?')} steps in "
        f"{_minutes(m.get('total_time_s', 0.0))} (training {_minutes(m.get('train_time_s', 0.0))}"
        f", evaluation {_minutes(m.get('eval_time_s', 0.0))})"
    ]
    if m.get("stop_reason"):
        lines.append(f"  stopped early: {m['stop_reason']}")
    if m.get("error"):
        lines.append(f"  error: {m['error']}")
    objs = default_metrics() if metrics_used is None else metrics_used
    views = [obj.summary(m) for obj in objs.values() if isinstance(obj, ViewMetric)]
    if any(views):
        lines.append("  test " + ", ".join(v for v in views if v))
    lines += [f"  {line}" for obj in objs.values() if not isinstance(obj, ViewMetric)
              and (line := obj.summary(m))]  # fmt: skip
    for label, key in (("mesh", "mesh"), ("picture", "mesh_picture"), ("video", "video")):
        if m.get(key):
            detail = f"  ({m['mesh/vertices']:,} vertices)" if key == "mesh" else ""
            if key == "mesh" and "mesh/outside_hull_raw" in m and m.get("mesh_raw"):
                detail += (f"; cleaned: {m['mesh/outside_hull_raw']:.1%} of the raw mesh's "
                           f"vertices outside the masks' hull ({m['mesh_raw']})")  # fmt: skip
            lines.append(f"  {label + ':':9s}{out / m[key]}{detail}")
    lines.append(f"  {'metrics:':9s}{out / 'metrics.json'}")
    return "\n".join(lines)
