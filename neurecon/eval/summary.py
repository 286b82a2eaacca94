"""The few lines a run ends with: what happened, the headline figures, where the files are."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _minutes(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


def run_summary(metrics: dict[str, Any], out: str | Path) -> str:
    """A short human summary of a run's ``metrics`` (as written to ``out/metrics.json``)."""
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
    if "test/psnr" in m:
        extra = [
            f"{label} {m[k]:.2f} dB"
            for label, k in (("object only", "test/psnr_masked"), ("vs photo", "test/psnr_photo"))
            if k in m
        ]
        line = f"  test PSNR {m['test/psnr']:.2f} dB"
        line += f" ({', '.join(extra)})" if extra else ""
        line += f", SSIM {m['test/ssim']:.3f}" if "test/ssim" in m else ""
        line += f", LPIPS {m['test/lpips']:.3f}" if "test/lpips" in m else ""
        lines.append(line)
    if "chamfer/relative" in m:
        lines.append(
            f"  Chamfer {m['chamfer/mean']:.4g} ({100 * m['chamfer/relative']:.2f} % of the "
            f"object radius), F-score {m.get('chamfer/fscore', float('nan')):.3f}"
        )
    if "dtu/overall" in m:
        lines.append(f"  DTU Chamfer {m['dtu/overall']:.3f} mm")
    for label, key in (("mesh", "mesh"), ("picture", "mesh_picture"), ("video", "video")):
        if m.get(key):
            detail = f"  ({m['mesh/vertices']:,} vertices)" if key == "mesh" else ""
            lines.append(f"  {label + ':':9s}{out / m[key]}{detail}")
    lines.append(f"  {'metrics:':9s}{out / 'metrics.json'}")
    return "\n".join(lines)
