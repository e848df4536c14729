"""The sweep progress display: ETA arithmetic, duration format, counts by status, and the step read
from a trial's metrics tail. Pure apart from one temporary metrics file."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from cluster.common.progress import Progress, eta_seconds, fmt_duration, last_step


def test_eta_is_mean_duration_times_waves_plus_what_running_trials_have_left():
    assert eta_seconds([], 5, [], 2) is None  # nothing finished yet: unknown
    # mean 100 s; 4 still to start at 2 at a time -> 200 s; the running ones (30 s, 90 s in) need <= 70 s more
    assert eta_seconds([80.0, 120.0], 4, [30.0, 90.0], 2) == pytest.approx(270.0)
    assert eta_seconds([100.0], 0, [150.0], 1) == 0.0  # overdue running trial: no negative time


@pytest.mark.parametrize("s,text", [(None, "?"), (9.4, "9s"), (61, "1m01s"), (3600 + 120, "1h02m")])
def test_durations_read_like_a_clock(s, text):
    assert fmt_duration(s) == text


def test_last_step_reads_the_newest_record(tmp_path: Path):
    assert last_step(tmp_path) is None
    (tmp_path / "track").mkdir()
    lines = [json.dumps({"step": i, "train_loss": 1.0}) for i in range(1, 2001)] + ["{truncated"]
    (tmp_path / "track" / "metrics.jsonl").write_text("\n".join(lines))
    assert last_step(tmp_path) == 2000  # a half-written last line is skipped


def test_counts_by_status_in_the_plain_summary(tmp_path: Path):
    out = io.StringIO()  # not a terminal: plain lines on events
    with Progress("demo", 4, parallel=2, stream=out) as p:
        p.started("attn_gate=none", tmp_path, 20)
        p.started("attn_gate=none", tmp_path, 20)  # a second seed with the same label counts too
        p.ended("attn_gate=none", "FINISHED")
        p.ended("attn_gate=none", "FAILED")
        p.started("attn_gate=const", tmp_path, 20)
        p.ended("attn_gate=const", "KILLED")
    last = out.getvalue().splitlines()[-1]
    assert last.startswith("[demo] done 1/4  running 0  failed 1  killed 1  queued 1  ETA ")
