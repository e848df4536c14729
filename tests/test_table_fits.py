"""`gatesweep table` in an 80-, 100- or 140-column terminal (issue #24 item 1): the box fits, with the
columns a reader needs first (configuration, n, mean ± CI, Δ with its CI, p adj - or a sequential
design's verdict and repeated CI); --wide and --columns show the rest (also without --compat); a pipe
still gets Markdown with every column, CSV is unchanged, and --json gives every column as numbers."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.cli import import_main, table_main
from sweeps.errors import SpecError
from tests.sweep_helpers import PYTHON, REPO, cli_env
from tests.test_analysis_seq_table import log_round2

STUDY = REPO / "tests" / "fixtures" / "legacy" / "study"
SEQ_SPEC = REPO / "sweeps" / "offline_stage1_v2.yaml"
WIDTHS = (80, 100, 140)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A sqlite store with the study's stages 1 and 2 and the round-2 sequential sweep."""
    root = tmp_path_factory.mktemp("tables")
    uri = f"sqlite:///{root}/mlflow.db"
    for csv, stage in (("results_stage1.csv", "stage1"), ("results_stage2.csv", "stage2")):
        import_main([str(STUDY / csv), "--stage", stage, "--tracking-uri", uri])
    log_round2(uri)
    return uri


TABLES = {"stage1": ["--stage", "stage1"], "stage2": ["--stage", "stage2"], "sequential": [str(SEQ_SPEC)]}


def _terminal(monkeypatch: pytest.MonkeyPatch, width: int) -> None:
    monkeypatch.setenv("COLUMNS", str(width))
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)  # capsys's stdout, as a terminal


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("which", list(TABLES))
def test_the_console_table_fits_the_terminal(store: str, which: str, width: int, monkeypatch, capsys):
    _terminal(monkeypatch, width)
    assert table_main([*TABLES[which], "--no-time", "--tracking-uri", store]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(len(ln) for ln in lines) <= width, "\n".join(ln for ln in lines if len(ln) > width)
    header = " ".join(ln for ln in lines[:6])
    first = (["mean ± 95%", "verdict", "Δ loss [RCI]"] if which == "sequential"
             else ["mean ± 95%", "Δ loss [95%", "p adj"])
    assert all(h in header for h in first), header
    assert "elementwise" in out and "How to read" in out
    if width == 80:  # the rest is named, with the way to see it
        assert "more column(s) not shown at this width" in out and "--wide" in out


def test_wide_and_columns_show_the_rest_without_compat(store: str, monkeypatch, capsys):
    _terminal(monkeypatch, 80)
    assert table_main(["--stage", "stage1", "--no-time", "--wide", "--tracking-uri", store]) == 0
    wide = capsys.readouterr().out
    assert "train time" in wide and "early stopped" in wide and max(len(ln) for ln in wide.splitlines()) > 80
    assert table_main(["--stage", "stage1", "--no-time", "--columns", "attn_gate,gate_act,test,p_value,train_time",
                       "--tracking-uri", store]) == 0
    picked = capsys.readouterr().out.splitlines()
    head = next(ln for ln in picked if "attn_gate" in ln)
    assert [c.strip() for c in head.strip("┃ ").split("┃")] == ["attn_gate", "gate_act", "test", "p", "train time"]
    with pytest.raises(SpecError, match=r"--columns: unknown column 'p_adjj' \(did you mean 'p_adj'"):
        table_main(["--stage", "stage1", "--no-time", "--columns", "attn_gate,p_adjj", "--tracking-uri", store])
    assert table_main(["--stage", "stage1", "--no-time", "--format", "csv", "--columns", "attn_gate,gate_act,p_adj",
                       "--tracking-uri", store]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "attn_gate,gate_act,p_adj"


def test_markdown_csv_and_json_keep_every_column(store: str, capsys):
    """Into a pipe (pytest's stdout is none): Markdown with every column, as before this change."""
    assert table_main(["--stage", "stage1", "--no-time", "--tracking-uri", store]) == 0
    piped = capsys.readouterr().out
    assert table_main(["--stage", "stage1", "--no-time", "--format", "md", "--tracking-uri", store]) == 0
    assert piped == capsys.readouterr().out
    head = [h.strip() for h in piped.splitlines()[0].strip("|").split("|")]
    assert head[:3] == ["attn_gate", "gate_act", "n"] and {"train time", "Δ 95% CI", "p adj", "test"} <= set(head)
    assert table_main(["--stage", "stage1", "--no-time", "--json", "--tracking-uri", store]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["table"] == "stage1" and len(doc["rows"]) == 5
    e = next(r for r in doc["rows"] if r["attn_gate"] == "elementwise")
    assert round(e["p_adj"], 4) == 0.0582 and isinstance(e["n"], int)
    assert next(r for r in doc["rows"] if r["attn_gate"] == "none")["p_adj"] is None  # NaN as null
    assert table_main(["--stage", "stage1", "--no-time", "--format", "csv", "--tracking-uri", store]) == 0
    assert set(doc["columns"]) == set(capsys.readouterr().out.splitlines()[0].split(","))


def test_in_a_real_terminal_and_with_the_global_json(store: str, tmp_path: Path):
    """The CLI itself on a pseudo-terminal of 80 columns; `gatesweep --json table` as `table --json`."""
    master, slave = pty.openpty()
    env = cli_env(COLUMNS="80", MLFLOW_TRACKING_URI=store)
    proc = subprocess.Popen([PYTHON, "-m", "gatesweep", "table", "--stage", "stage2", "--no-time"], cwd=tmp_path,
                            env=env, stdout=slave, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=300) == 0, proc.stderr.read() if proc.stderr else ""
    lines = b"".join(chunks).decode().replace("\r", "").splitlines()
    assert lines and max(len(ln) for ln in lines) <= 80 and any("Δ loss [95%" in ln for ln in lines), lines
    res = subprocess.run([PYTHON, "-m", "gatesweep", "--json", "table", "--stage", "stage2", "--no-time"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and len(json.loads(res.stdout)["rows"]) == 8, res.stderr


def test_every_display_column_is_shown_or_named(store: str):
    """No column of the display table is lost at any width: shown, combined into a shown cell, or named
    in the line under the table."""
    from analysis import console_table, render
    from analysis.table import stage_table
    from tests.test_analysis_seq_table import annotated
    from tests.test_analysis_study import tidy

    for numeric in (stage_table(tidy("results_stage1.csv", "stage1")), annotated()):
        display = render.display_table(numeric)
        for width in (60, *WIDTHS, 400):
            fitted = console_table.fit(numeric, display, width)
            shown = set(fitted.frame.columns) | set(console_table.COVERED) | {"config"}
            merged = set(console_table.keys_of(display)) if "config" in fitted.frame.columns else set()
            assert set(display.columns) <= shown | set(fitted.left_out) | merged, width
