"""Digit-for-digit: the study's per-seed rows -> compat view == the study's published tables.

Fixtures: tests/fixtures/legacy/study (see its README). The published tables are the README tables
of the study's repository; here they are compared as CSV text. Pure path (CSV -> tidy -> compat);
the MLflow round trip of the same check is in test_analysis_mlflow.py.
"""

from pathlib import Path

import pandas as pd
import pytest

from analysis import legacy, render
from analysis.table import compat_table

STUDY = Path(__file__).parent / "fixtures" / "legacy" / "study"

# stage -> ((file, stage) blocks, --columns as the study's notebook chose them by hand, or None)
CASES = {
    "stage1": ([("results_stage1.csv", "stage1")], None),
    "stage2": ([("results_stage2.csv", "stage2")], "attn_gate,learning_rate,final_loss,train_time"),
    "stage2_5": ([("results_stage2_5.csv", "stage2_5")],
                 "attn_gate,learning_rate,num_iterations,final_loss,train_time"),
    "stage3": ([("results_stage_3.csv", "stage3"), ("baseline.csv", "stage3.5")], None),
}


def published_csv(stage: str) -> str:
    """The README table under '## <stage>' as CSV text (cells stripped of padding)."""
    lines = (STUDY / "published_tables.md").read_text().splitlines()
    start = lines.index(f"## {stage}")
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        if line.startswith("|") and not set(line) <= set("|-"):
            rows.append(",".join(cell.strip() for cell in line.strip("|").split("|")))
    return "\n".join(rows) + "\n"


def tidy(blocks) -> pd.DataFrame:
    frames = [legacy.tidy_frame(legacy.parse_results_csv((STUDY / f).read_text(), f), stage)
              for f, stage in blocks]
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("stage", list(CASES))
def test_compat_reproduces_published_table(stage):
    blocks, columns = CASES[stage]
    table = compat_table(tidy(blocks), stages=[s for _, s in blocks],
                         columns=columns.split(",") if columns else None)
    assert render.to_csv(table) == published_csv(stage)


def test_default_compat_of_stage2_differs_only_by_the_seeds_column():
    # The study dropped `seeds` from its stage-2 table by hand; our default keeps it.
    table = compat_table(tidy(CASES["stage2"][0]))
    assert render.to_csv(table.drop(columns="seeds")) == published_csv("stage2")
    assert set(table["seeds"]) == {2}


def test_study_rounds_the_mean_not_the_seeds():
    # stage 1 none: seeds 3.533581495 and 3.533149481 -> mean 3.5333655 -> "3.5334" as published;
    # averaging the 4-decimal seed values would give 3.5333.
    runs = tidy(CASES["stage1"][0])
    none = runs[runs["attn_gate"] == "none"]["final_val_loss"]
    assert format(none.round(4).mean(), ".4f") == "3.5333"
    assert compat_table(runs).set_index("attn_gate").loc["none", "final_loss"] == "3.5334"
