"""The local tracking record a run leaves behind, the tracker choice, and credential redaction."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from tests.trainer_helpers import data_cfg, single_env
from trainer.loop import train
from trainer.schedule import lr_factor
from trainer.tracking import LocalTracker, NullTracker, make_tracker

N, VAL_EVERY, LR = 14, 5, 0.02


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    tmp = tmp_path_factory.mktemp("track")
    cfg = data_cfg(tmp, num_iterations=N, warmdown_iters=4, val_every=VAL_EVERY, learning_rate=LR, warmup_iters=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        summary = train(cfg, env=single_env())  # no tracker given: the loop makes the local one
    return cfg, summary, Path(cfg.run.out_dir) / "track"


def metrics(root: Path) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for line in (root / "metrics.jsonl").read_text().splitlines():
        p = json.loads(line)
        assert set(p) == {"key", "value", "step", "ts"} and isinstance(p["ts"], int)
        out.setdefault(p["key"], []).append((p["step"], p["value"]))
    return out


def test_params_and_tags(record: tuple):
    cfg, _, root = record
    assert json.loads((root / "params.json").read_text()) == cfg.flat() | {"run_id": "run"}
    tags = json.loads((root / "tags.json").read_text())
    assert tags["gpu_name"] == "cpu" and tags["n_gpus"] == "1" and tags["gatesweep.run_uid"] == "run"
    assert re.fullmatch(r"([0-9a-f]{40}|unknown)(-dirty)?", tags["git_sha"])


def test_metrics_history(record: tuple):
    cfg, summary, root = record
    m = metrics(root)
    assert set(m) == {"train_loss", "val_loss", "lr", "step_avg_ms", "train_time_ms"}
    assert [s for s, _ in m["train_loss"]] == list(range(1, N + 1))
    assert [s for s, _ in m["val_loss"]] == [0, 5, 10, 14]
    assert m["val_loss"] == [(s, v) for s, v in summary.val_history]
    # the lr logged at step s+1 is the one the update at 0-based step s used (warmup, constant, warmdown)
    expected_lr = [LR * lr_factor(s, num_iterations=N, warmup_iters=2, warmdown_iters=4) for s in range(N)]
    assert [v for _, v in m["lr"]] == pytest.approx(expected_lr, rel=1e-12)
    assert expected_lr[0] == LR / 2 and expected_lr[-1] == LR / 4
    avg = [v for _, v in m["step_avg_ms"]]
    assert all(math.isnan(v) for v in avg[:12]) and all(v > 0 for v in avg[12:])  # nan through step 12, as the log
    # the same losses as the log's step lines
    log = (Path(cfg.run.out_dir) / "logs" / "run.txt").read_text()
    logged = [float(x) for x in re.findall(r"^step:\d+/\d+ train_loss:(\S+) ", log, re.M)]
    assert logged == [round(v, 4) for _, v in m["train_loss"]]


def test_summary_status_and_artifacts(record: tuple):
    cfg, summary, root = record
    s = json.loads((root / "summary.json").read_text())
    assert s["final_val_loss"] == summary.val_history[-1][1] == summary.final_val_loss
    assert s["best_val_loss"] == min(v for _, v in summary.val_history)
    assert s["final_step"] == N and s["train_time_ms"] > 0 and s["ms_per_step"] > 0 and s["peak_mem_mib"] == 0
    assert json.loads((root / "status.json").read_text())["status"] == "FINISHED"
    arts = root / "artifacts"
    assert sorted(p.name for p in arts.iterdir()) == ["curve.csv", "run.txt"]
    assert (arts / "run.txt").read_text() == (Path(cfg.run.out_dir) / "logs" / "run.txt").read_text()
    curve = (arts / "curve.csv").read_text().splitlines()
    assert curve[0] == "step,val_loss"
    assert [(int(a), float(b)) for a, b in (ln.split(",") for ln in curve[1:])] == summary.val_history


def test_make_tracker_is_local_without_a_tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("GATESWEEP_TRACKING", raising=False)
    t = make_tracker(tmp_path / "a")
    assert type(t) is LocalTracker
    assert json.loads((tmp_path / "a" / "status.json").read_text())["status"] == "RUNNING"
    t.finish("FINISHED")
    # a launcher may force local tracking even with a URI set
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("GATESWEEP_TRACKING", "local")
    assert type(make_tracker(tmp_path / "b")) is LocalTracker
    # non-main ranks record nothing
    assert isinstance(make_tracker(tmp_path / "c", is_main=False), NullTracker)
    assert not (tmp_path / "c").exists()


SECRET = "s3cr3tvalue"


def test_credential_values_never_reach_the_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A credential-looking env var's value, even when it ends up in a config value (here `notes`),
    is redacted from the log, params, tags, status, artifacts and results.csv."""
    monkeypatch.setenv("MY_API_TOKEN", SECRET)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = data_cfg(tmp_path, num_iterations=3, warmdown_iters=1, notes=f"debug with {SECRET}")
    tracker = make_tracker(tmp_path / "out" / "track")
    tracker.set_tags({"launched_by": f"token={SECRET}"})
    assert train(cfg, tracker, env=single_env()).status == "FINISHED"
    files = [p for d in ("out", "experiments") for p in (tmp_path / d).rglob("*") if p.is_file() and p.suffix != ".pt"]
    names = {p.relative_to(tmp_path).as_posix() for p in files}
    assert {"out/logs/run.txt", "out/track/params.json", "out/track/tags.json", "out/track/artifacts/run.txt",
            "experiments/results.csv"} <= names
    leaks = [p for p in files if SECRET in p.read_text()]
    assert not leaks, leaks
    params = json.loads((tmp_path / "out" / "track" / "params.json").read_text())
    assert params["notes"] == "debug with <redacted:MY_API_TOKEN>"
