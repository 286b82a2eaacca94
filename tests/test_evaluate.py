"""evaluate.py on real tiny runs: tables, formats, grouping by differing config, errors."""

import csv
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import COARSE_GRID, REPO, TINY

HASH = ["encoder.n_levels=4", "encoder.log2_table_size=12", "encoder.max_resolution=64"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Two finished runs that differ by encoder, under one folder (like a multirun dir)."""
    root = tmp_path_factory.mktemp("sweep")
    for i, enc in enumerate([["encoder=frequency"], ["encoder=hashgrid", *HASH]]):
        res = subprocess.run(
            [
                sys.executable,
                "train.py",
                f"hydra.run.dir={root / str(i)}",
                *TINY,
                *COARSE_GRID,
                "dataset.shape=sphere",
                "trainer.max_steps=30",
                *enc,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert res.returncode == 0, res.stderr[-2000:]
    return root


def _evaluate(*args):
    return subprocess.run(
        [sys.executable, "evaluate.py", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _metrics(path):
    return json.loads((path / "metrics.json").read_text())


def test_markdown_table_labels_runs_by_the_differing_group(sweep):
    res = _evaluate(sweep)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    # Masked scenes add the object-only PSNR; their photos' background is the render's (black),
    # so there is no separate "PSNR photo" column.
    header = [c.strip() for c in lines[0].strip().strip("|").split("|")]
    assert header == ["run", "scene", "PSNR↑", "PSNR object↑", "SSIM↑", "LPIPS↓", "Chamfer↓",
                      "time (s)"]  # fmt: skip
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [r[0] for r in rows] == ["encoder=frequency", "encoder=hashgrid", "mean"]
    m = [_metrics(sweep / "0"), _metrics(sweep / "1")]
    for row, mi in zip(rows, m, strict=False):
        assert row[1] == "synthetic_sphere"
        assert row[2] == f"{mi['test/psnr']:.2f}" and row[4] == f"{mi['test/ssim']:.3f}"
        assert row[3] == f"{mi['test/psnr_masked']:.2f}" and row[6] == f"{mi['chamfer/mean']:.4g}"
    assert rows[2][2] == f"{np.mean([x['test/psnr'] for x in m]):.2f}"


def test_csv_and_json_round_trip(sweep, tmp_path):
    m = {"encoder=frequency": _metrics(sweep / "0"), "encoder=hashgrid": _metrics(sweep / "1")}
    assert _evaluate(sweep, "--format", "csv", "--out", tmp_path / "t.csv").returncode == 0
    with open(tmp_path / "t.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows[:2]:
        assert float(r["PSNR↑"]) == m[r["run"]]["test/psnr"]
        assert float(r["Chamfer↓"]) == m[r["run"]]["chamfer/mean"]
    assert rows[2]["run"] == "mean"
    res = _evaluate(sweep, "--format", "json")
    data = json.loads(res.stdout)
    assert {d["run"]: d["SSIM↑"] for d in data[:2]} == {k: v["test/ssim"] for k, v in m.items()}


def test_by_scene_pivot_and_latex(sweep):
    res = _evaluate(sweep, "--by-scene", "psnr")
    assert res.returncode == 0
    header = [c.strip() for c in res.stdout.splitlines()[0].strip().strip("|").split("|")]
    assert header == ["PSNR↑", "synthetic_sphere", "mean"]
    res = _evaluate(sweep, "--format", "latex")
    assert (
        res.returncode == 0 and r"\begin{tabular}" in res.stdout and "PSNR$\\uparrow$" in res.stdout
    )


def test_recompute_from_checkpoint_reproduces_metrics(sweep, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(sweep / "0", run)
    before = _metrics(run)
    (run / "metrics.json").unlink()
    res = _evaluate(run, "--recompute")
    assert res.returncode == 0, res.stderr[-2000:]
    after = _metrics(run)
    assert after["test/psnr"] == pytest.approx(before["test/psnr"], abs=1e-4)
    assert after["chamfer/mean"] == pytest.approx(before["chamfer/mean"], rel=1e-3)


def test_user_errors_are_messages_not_tracebacks(tmp_path):
    res = _evaluate(tmp_path)
    assert res.returncode == 2 and "no runs found" in res.stderr and "Traceback" not in res.stderr
    (tmp_path / "r" / ".hydra").mkdir(parents=True)
    (tmp_path / "r" / ".hydra" / "config.yaml").write_text("a: 1\n")
    res = _evaluate(tmp_path)
    assert res.returncode == 2 and "none of the 1 run(s) found has metrics.json" in res.stderr
    assert "no metrics.json (unfinished run?)" in res.stderr
    res = _evaluate(tmp_path / "missing")
    assert res.returncode == 2 and "does not exist" in res.stderr


HOSTILE_NAME = "x\\input{/etc/passwd}$^~{}&%_#|y\nz"


def test_names_from_foreign_metrics_are_escaped_in_latex_and_markdown():
    """A scene or run name comes from someone's metrics.json: every LaTeX special character is
    escaped (``\\ { } $ ~ ^`` passed through before), and ``|`` or a newline cannot add
    Markdown cells or rows."""
    from neurecon.eval.tables import render

    header, rows = ["run", "scene", "PSNR↑"], [[HOSTILE_NAME, "dtu_scan65", "31.20"]]
    tex = render(header, rows, [{}], "latex")
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip()
    cell = body.split(" & ")[0]
    # the cell holds no LaTeX command, group or math shift but escaped ones
    for bad in ("\\input", "$", "{/", "^", "~"):
        assert bad not in cell.replace(r"\$", "").replace(r"\{", "").replace(r"\}", "").replace(
            r"\textasciicircum", "").replace(r"\textasciitilde", "").replace(
            r"\textbackslash ", ""), (bad, cell)  # fmt: skip
    assert r"\textbackslash input\{/etc/passwd\}\$\textasciicircum \textasciitilde " in cell
    assert r"\&\%\_\#" in cell and body.count(" & ") == 2  # three cells, one row
    assert r"PSNR$\uparrow$" in tex
    md = render(header, rows, [{}], "markdown").strip().splitlines()
    assert len(md) == 3  # header, rule, one row: the newline did not start another
    cells = [c.strip() for c in re.split(r"(?<!\\)\|", md[2])[1:-1]]
    assert len(cells) == 3 and cells[0].replace("\\|", "|") == HOSTILE_NAME.replace("\n", " ")
    assert cells[2] == "31.20"  # formatted figures are kept as written


def test_the_paper_table_of_dtu_scans_with_the_protocol_under_it(tmp_path, capsys):
    """A 15-scan sweep as ``train.py -m ... dataset.scan=24,37,...`` leaves it: scans as
    columns in the papers' order, a scan without ground truth shows "–" and is left out of the
    mean, and the culling protocol is printed under the table."""
    import evaluate

    scans = [24, 37, 40, 55, 63, 65, 69, 83, 97, 105, 106, 110, 114, 118, 122]
    chamfer = {s: 0.5 + 0.01 * i for i, s in enumerate(scans)}
    for i, s in enumerate(scans):
        run = tmp_path / "sweep" / str(i)
        run.mkdir(parents=True)
        m = {"status": "completed", "scene": f"dtu_scan{s}", "test/psnr": 30.0}
        if s != 83:  # no ground truth for this one
            m.update({"dtu/overall": chamfer[s], "dtu/protocol": "neus"})
        (run / "metrics.json").write_text(json.dumps(m))
        (run / ".hydra").mkdir()  # the runs differ in their scan only: one row
        (run / ".hydra" / "config.yaml").write_text(f"dataset:\n  root: /data/DTU\n  scan: {s}\n")
    assert evaluate.main([str(tmp_path / "sweep"), "--by-scene", "dtu/overall"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    header = [c.strip() for c in out[0].strip("|").split("|")]
    assert header == ["DTU Chamfer (mm)↓", *map(str, scans), "mean"]
    assert len([line for line in out if line.startswith("|")]) == 3  # header, rule, one row
    row = [c.strip() for c in out[2].strip("|").split("|")]
    assert row[1 + scans.index(83)] == "–"
    assert row[1 + scans.index(24)] == "0.50" and row[1 + scans.index(122)] == "0.64"
    want = np.mean([v for s, v in chamfer.items() if s != 83])
    assert row[-1] == f"{want:.2f}"
    assert out[-1].startswith("DTU protocol: neus: masks dilated by 50 px")
