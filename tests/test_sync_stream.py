"""`gatesweep sync` of a big record (issue #25 item 11): 10^6 metric lines took 81 s and 1.1 GB, the
whole file read and parsed into one list before the first batch. Now the record is streamed (bounded
reads, one batch of points in memory, progress saved after each batch) and a sqlite store takes each
batch in one bulk statement. Speed is measured by bench/sync_stream.py, not here; these tests check the
behaviour: the reader is lazy and bounded, a big record's sync does not grow the process, and the bulk
rows read back exactly as MLflow's own log_batch writes them.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
import tracemalloc
from pathlib import Path

import pytest

from tests.sweep_helpers import PYTHON, cli_env, client

KEYS = ("train_loss", "lr", "step_avg_ms", "val_loss")
def write_record(track: Path, n: int, *, extra: list[dict] | None = None) -> None:
    """A FINISHED record of `n` metric lines (4 keys per step), as the trainer writes it."""
    track.mkdir(parents=True, exist_ok=True)
    with open(track / "metrics.jsonl", "w") as f:
        for i in range(n):
            step = i // len(KEYS)
            f.write(json.dumps({"key": KEYS[i % len(KEYS)], "value": 1.0 / (1 + i), "step": step,
                                "ts": 1_790_000_000_000 + step}) + "\n")
        for p in extra or []:
            f.write(json.dumps(p) + "\n")
    (track / "params.json").write_text(json.dumps({"learning_rate": 0.01}))
    (track / "tags.json").write_text(json.dumps({"experiment": f"stream-{track.parent.name}"}))
    (track / "status.json").write_text(json.dumps({"status": "FINISHED", "reason": "", "time": time.time()}))


def test_the_reader_streams_bounded_chunks(tmp_path: Path):
    from trainer.record import READ_BLOCK, metric_chunks

    path = tmp_path / "metrics.jsonl"
    write_record(tmp_path, 300_000)
    size = path.stat().st_size
    assert size > 24 * 2**20 and size > 20 * READ_BLOCK
    with open(path, "ab") as f:
        f.write(b'{"key": "lr", "va')  # a line still being written: left for later
    tracemalloc.start()
    try:
        chunks = metric_chunks(path, 0, 1000)
        first, end, bad = next(chunks)  # lazy: the first batch before the file is read through
        assert len(first) == 1000 and bad == 0 and end < READ_BLOCK
        sizes, ends = [], [end]
        for chunk, end, _ in chunks:  # each batch dropped once seen, as a delivery does
            sizes.append(len(chunk))
            ends.append(end)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert all(n <= 1000 for n in sizes) and sum(sizes) == 299_000
    assert ends == sorted(ends) and ends[-1] == size
    assert peak < 8 * 2**20, peak  # a block, its points and one batch: not the 26 MB file
    # from an offset in the middle of the file: the same points as a full read's rest
    whole = [p for c, _, _ in metric_chunks(path, 0, 1000) for p in c]
    assert [p for c, _, _ in metric_chunks(path, ends[50], 777) for p in c] == whole[51_000:]


def _sync(cwd: Path, track: Path) -> dict:
    """`gatesweep sync TRACK` into cwd/mlflow.db as a fresh process: exit code, output, peak RSS (MiB)."""
    script = ("import json, os, subprocess, sys\n"
              "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)\n"
              "out, err = p.stdout.read(), p.stderr.read()\n"
              "_, status, usage = os.wait4(p.pid, 0)\n"
              "print(json.dumps({'rc': os.waitstatus_to_exitcode(status), 'out': out, 'err': err[-3000:],"
              " 'rss_mib': usage.ru_maxrss / 1024}))\n")
    res = subprocess.run([PYTHON, "-c", script, PYTHON, "-m", "gatesweep", "sync", str(track)], cwd=cwd,
                         env=cli_env(), capture_output=True, text=True, timeout=600)  # a hang guard only
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["rc"] == 0, out
    return out


def test_a_big_record_syncs_without_growing_the_process(tmp_path: Path):
    """300,000 lines against 1,000: the same peak RSS within a margin (before: the whole record in
    memory, ~0.35 GB more for 300,000 lines). Every point lands once; a second sync sends nothing."""
    small, big = tmp_path / "small" / "track", tmp_path / "big" / "track"
    write_record(small, 1_000)
    write_record(big, 300_000)
    base = _sync(tmp_path, small)
    out = _sync(tmp_path, big)
    assert "300000 metric points" in out["out"], out
    assert out["rss_mib"] - base["rss_mib"] < 80, (base["rss_mib"], out["rss_mib"])
    store = client(f"sqlite:///{tmp_path}/mlflow.db")
    exp = store.get_experiment_by_name("stream-big")
    (run,) = store.search_runs([exp.experiment_id])
    import sqlite3

    con = sqlite3.connect(tmp_path / "mlflow.db")
    assert con.execute("SELECT count(*) FROM metrics WHERE run_uuid = ?", (run.info.run_id,)).fetchone() == (300_000,)
    last = 300_000 // len(KEYS) - 1
    assert {k: run.data.metrics[k] for k in KEYS} == {k: 1.0 / (1 + last * 4 + i) for i, k in enumerate(KEYS)}
    again = _sync(tmp_path, big)
    assert again["out"].splitlines()[-1] == "sync: 0 record(s) delivered, 0 failed, 1 already up to date"


@pytest.mark.parametrize("bulk", [True, False])
def test_bulk_rows_read_back_as_log_batch_writes_them(tmp_path: Path, bulk: bool, monkeypatch: pytest.MonkeyPatch):
    """NaN, +-inf, a point sent twice, steps out of order, the newest value at a lower timestamp: the
    sqlite bulk path and MLflow's log_batch (the other parametrization) leave the same metrics."""
    import trainer.mlflow_sqlite as bulk_mod
    from trainer.mlflow_sync import sync_record

    if not bulk:
        monkeypatch.setattr(bulk_mod, "_usable", lambda con, run_id: False)
    odd = [{"key": "odd", "value": math.nan, "step": 7, "ts": 5}, {"key": "odd", "value": math.inf, "step": 8, "ts": 6},
           {"key": "odd", "value": -math.inf, "step": 9, "ts": 4}, {"key": "x", "value": 2.0, "step": 3, "ts": 9},
           {"key": "x", "value": 2.0, "step": 3, "ts": 9}, {"key": "x", "value": 1.0, "step": 5, "ts": 1},
           {"key": "x", "value": 3.0, "step": 4, "ts": 99}, {"key": "x", "value": 0.5, "step": 5, "ts": 1}]
    track = tmp_path / "rec" / "track"
    write_record(track, 2_500, extra=odd)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    from sweeps.store_file import ensure_store

    ensure_store(uri)
    res = sync_record(track, uri)
    assert res["metrics_delivered"] == 2_508
    c = client(uri)
    run = c.get_run(res["run_id"])
    got = {k: (run.data.metrics[k], [(m.step, m.timestamp, m.value) for m in c.get_metric_history(run.info.run_id, k)])
           for k in ("odd", "x")}
    lr = got["odd"][1]
    big = 1.7976931348623157e308  # MLflow keeps +-inf as the largest double
    assert math.isnan(next(v for s, _, v in lr if s == 7)) and (8, 6, big) in lr and (9, 4, -big) in lr
    assert got["odd"][0] == -big  # latest by (step, timestamp, value): step 9
    assert sorted(got["x"][1]) == [(3, 9, 2.0), (4, 99, 3.0), (5, 1, 0.5), (5, 1, 1.0)]  # the repeat kept once
    assert got["x"][0] == 1.0  # step 5, ts 1: the larger value wins the tie
