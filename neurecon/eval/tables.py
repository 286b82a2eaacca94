"""Metric tables from finished runs, the library behind ``evaluate.py``: find run folders,
read their ``metrics.json``, label them by what differs, and print paper-style tables."""

from __future__ import annotations

import glob
import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from neurecon.atomic import atomic_write
from neurecon.errors import NeuReconError, one_line
from neurecon.metrics.nodes import Figure, Metric, all_figures

log = logging.getLogger(__name__)

# The columns are the figures of the metric objects (neurecon/metrics/nodes.py), then the time.
TIME = Figure(("total_time_s", "train_time_s"), "time (s)", None, "{:.0f}")


def table_figures(metrics: Mapping[str, Metric] | None = None) -> list[Figure]:
    """The table's possible columns: every metric object's figures (default: the built-in
    metrics), then the run's time."""
    return [*all_figures(metrics), TIME]


FORMATS = ("markdown", "csv", "json", "latex")


class EvaluationError(NeuReconError):
    """Nothing to tabulate (no runs, no metrics)."""


@dataclass
class RunRecord:
    path: Path
    metrics: dict[str, Any]
    choices: dict[str, str] = field(default_factory=dict)  # config group → option
    config: dict[str, Any] = field(default_factory=dict)  # flattened dotted keys
    label: str = ""

    @property
    def scene(self) -> str:
        return str(self.metrics.get("scene", self.path.name))

    def value(self, keys: tuple[str, ...]) -> float | None:
        for k in keys:
            v = self.metrics.get(k)
            if isinstance(v, int | float) and math.isfinite(v):
                return float(v)
        return None


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def is_run_dir(p: Path) -> bool:
    return (p / "metrics.json").is_file() or (p / ".hydra" / "config.yaml").is_file()


def find_runs(paths: list[str]) -> list[Path]:
    """Run directories named by ``paths`` (run dirs, sweep dirs or globs), in sorted order."""
    found: list[Path] = []
    for pattern in paths:
        matches = sorted(glob.glob(pattern)) or [pattern]
        for m in matches:
            p = Path(m)
            if not p.exists():
                raise EvaluationError(f"{p} does not exist")
            if is_run_dir(p):
                found.append(p)
            else:  # a sweep or outputs folder: every run below it
                found += sorted(
                    {c.parent for c in p.rglob("metrics.json")}
                    | {c.parent.parent for c in p.rglob(".hydra/config.yaml")}
                )
    runs = sorted(dict.fromkeys(found))
    if not runs:
        raise EvaluationError(
            f"no runs found under {', '.join(paths)} (a run folder holds "
            "metrics.json or .hydra/config.yaml)"
        )
    return runs


def read_run_record(path: Path) -> RunRecord | None:
    """A run's metrics and config; None (with a warning) when it has no metrics."""
    mfile = path / "metrics.json"
    if not mfile.is_file():
        log.warning("%s: no metrics.json (unfinished run?); use --recompute to evaluate it", path)
        return None
    try:
        metrics = json.loads(mfile.read_bytes())
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise EvaluationError(f"{mfile}: not valid JSON ({one_line(e)})") from None
    if not isinstance(metrics, dict):
        raise EvaluationError(f"{mfile}: not a JSON object")
    rec = RunRecord(path, metrics)
    cfg_file, hydra_file = path / ".hydra" / "config.yaml", path / ".hydra" / "hydra.yaml"
    try:  # labels only: read as data, never resolved or built
        if cfg_file.is_file():
            rec.config = _flatten(OmegaConf.to_container(OmegaConf.load(cfg_file), resolve=False))
        if hydra_file.is_file():
            hy = OmegaConf.load(hydra_file)
            choices = OmegaConf.select(hy, "hydra.runtime.choices", default={}) or {}
            rec.choices = {str(k): str(v) for k, v in dict(choices).items()
                           if not str(k).startswith("hydra")}  # fmt: skip
    except Exception as e:  # a malformed YAML file in someone's run folder
        raise EvaluationError(f"{path}/.hydra: unreadable config ({one_line(e)})") from None
    return rec


def label_runs(runs: list[RunRecord]) -> None:
    """Label each run by the config group options and keys that differ between the runs."""
    groups = sorted({g for r in runs for g in r.choices})
    diff_groups = [g for g in groups if len({r.choices.get(g) for r in runs}) > 1]
    # Only keys every run has: runs from older code versions lack newer keys.
    keys = sorted(set.intersection(*(set(r.config) for r in runs))) if runs else []
    skip = {"dataset.root", "dataset.scan"}  # the scene has its own column
    diff_keys = [
        k
        for k in keys
        if len({json.dumps(r.config.get(k), sort_keys=True) for r in runs}) > 1
        and k not in skip
        and not k.endswith("._target_")
        and k.split(".")[0] not in diff_groups  # implied by the group option
    ]
    for r in runs:
        parts = [f"{g}={r.choices.get(g)}" for g in diff_groups]
        parts += [f"{k}={r.config.get(k)}" for k in diff_keys]
        r.label = ", ".join(parts) or "default"


def build_table(
    runs: list[RunRecord], figures: list[Figure] | None = None
) -> tuple[list[str], list[list[str]], list[dict]]:
    """Rows per run plus a mean row. Returns header, formatted rows, raw records. An optional
    figure (a masked scene's other PSNRs, the DTU terms) is a column only when a run has it."""
    columns = [f for f in (figures or table_figures())
               if not f.optional or any(r.value(f.keys) is not None for r in runs)]  # fmt: skip
    header = ["run", "scene", *[c.header for c in columns]]
    rows, raw = [], []
    for r in runs:
        vals = [r.value(c.keys) for c in columns]
        rows.append([r.label, r.scene, *[c.format(v) for v, c in zip(vals, columns, strict=True)]])
        raw.append(
            {
                "run": r.label,
                "scene": r.scene,
                "path": str(r.path),
                "status": r.metrics.get("status"),
                **{c.header: v for c, v in zip(columns, vals, strict=True)},
            }
        )
    means = []
    for c in columns:
        vals = [x[c.header] for x in raw if x[c.header] is not None]
        means.append(sum(vals) / len(vals) if vals else None)
    rows.append(["mean", "", *[c.format(m) for m, c in zip(means, columns, strict=True)]])
    raw.append(
        {"run": "mean", "scene": "", **{c.header: m for c, m in zip(columns, means, strict=True)}}
    )
    return header, rows, raw


def pivot_table(
    runs: list[RunRecord], column: str, figures: list[Figure] | None = None
) -> tuple[list[str], list[list[str]], list[dict]]:
    """Paper-style table: one row per label, scenes as columns, mean at the end. ``column``: a
    figure's ``metrics.json`` key (``dtu/overall``; that key alone: a scan without it shows "–"
    and is left out of the mean) or the start of its label (``chamfer``, ``psnr``)."""
    figs = figures or table_figures()
    spec = next((f for f in figs if f.key == column), None) or next(
        (f for f in figs if f.label.lower().startswith(column.lower())), None
    )
    if spec is None:
        choices = [f.label for f in figs] + [f.key for f in figs]
        raise EvaluationError(f"--by-scene {column!r}: choose from {choices}")
    scenes = sorted({r.scene for r in runs}, key=lambda s: (len(s), s))
    labels = list(dict.fromkeys(r.label for r in runs))
    # DTU scans as the papers head them: 24 37 40 ... (when every scene is a DTU scan)
    scans = [re.fullmatch(r"dtu_scan(\d+)", s) for s in scenes]
    heads = [m.group(1) for m in scans] if scans and all(scans) else scenes
    if scans and all(scans):
        order = sorted(range(len(scenes)), key=lambda i: int(heads[i]))
        scenes, heads = [scenes[i] for i in order], [heads[i] for i in order]
    header = [spec.header, *heads, "mean"]
    rows, raw = [], []
    for lab in labels:
        vals = {}
        for s in scenes:
            v = [r.value(spec.keys) for r in runs if r.label == lab and r.scene == s]
            v = [x for x in v if x is not None]
            vals[s] = sum(v) / len(v) if v else None
        present = [x for x in vals.values() if x is not None]
        mean = sum(present) / len(present) if present else None
        rows.append([lab, *[spec.format(vals[s]) for s in scenes], spec.format(mean)])
        raw.append({"run": lab, **vals, "mean": mean})
    return header, rows, raw


def protocol_note(runs: list[RunRecord]) -> str | None:
    """The line printed under a table with DTU figures: which mesh culling produced them."""
    from neurecon.metrics.dtu import PROTOCOLS

    names = sorted({str(r.metrics["dtu/protocol"]) for r in runs if "dtu/protocol" in r.metrics})
    if not names:
        return None
    described = [PROTOCOLS[n].describe() if n in PROTOCOLS else _plain_text(n) for n in names]
    mixed = " (MIXED: these figures are not comparable)" if len(names) > 1 else ""
    return "DTU protocol: " + "; ".join(described) + mixed


def _plain_text(cell: Any) -> str:
    """One line of text: control characters (newlines, tabs) become spaces. A run or scene name
    comes from someone's ``metrics.json`` and must not break a table's rows."""
    return "".join(" " if ord(ch) < 32 or ord(ch) == 127 else ch for ch in str(cell))


def _frame(header: list[str], rows: list[list[Any]]) -> pd.DataFrame:
    return pd.DataFrame([[_plain_text(c) for c in r] for r in rows], columns=header, dtype=str)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub Markdown table (pandas → tabulate); ``|`` inside a cell is escaped, since
    tabulate lays the table out but leaves the pipe alone."""
    esc = [[_plain_text(c).replace("|", "\\|") for c in r] for r in rows]
    head = [h.replace("|", "\\|") for h in header]
    return (
        _frame(head, esc).to_markdown(index=False, tablefmt="github", disable_numparse=True) + "\n"
    )


def latex_table(header: list[str], rows: list[list[Any]]) -> str:
    """A booktabs ``tabular`` (pandas' Styler): every LaTeX special character in headers and
    cells is escaped (``\\ { } $ & # ^ _ ~ %``); the ↑/↓ of our headers become math arrows."""
    df = _frame(header, rows)
    styler = df.style.hide(axis="index").format(escape="latex")
    styler = styler.format_index(escape="latex", axis=1)
    text = styler.to_latex(hrules=True, column_format="l" + "c" * (len(header) - 1))
    return text.replace("↑", r"$\uparrow$").replace("↓", r"$\downarrow$")


def render(header: list[str], rows: list[list[str]], raw: list[dict], fmt: str) -> str:
    if fmt == "markdown":
        return markdown_table(header, rows)
    if fmt == "csv":  # raw numbers (full precision, empty when missing) for spreadsheets
        return pd.DataFrame(raw).to_csv(index=False)
    if fmt == "json":
        return json.dumps(raw, indent=2, allow_nan=False) + "\n"
    if fmt == "latex":
        return latex_table(header, rows)
    raise EvaluationError(f"--format {fmt!r}: choose from {list(FORMATS)}")


def write_output(text: str, out: str | None) -> None:
    if out is None:
        print(text, end="")
    else:
        atomic_write(out, lambda p: p.write_text(text))
        log.info("wrote %s", out)
