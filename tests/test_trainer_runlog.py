"""The run record: experiments/results.csv under concurrent writers, and the run log in the
reference's format (so modded-nanogpt log parsers keep working)."""

from __future__ import annotations

import csv
import fcntl
import multiprocessing as mp
import re
from pathlib import Path

import pytest
import torch

from tests.trainer_helpers import data_cfg, single_env
from trainer.loop import train
from trainer.runlog import RESULTS_COLUMNS, SEP, append_result
from trainer.tracking import NullTracker

WRITERS, ROWS = 8, 50


def _append_rows(path: str, writer: int, barrier) -> None:  # noqa: ANN001 - multiprocessing.Barrier
    barrier.wait()  # all writers start together
    for i in range(ROWS):
        append_result(path, {"run_id": f"w{writer}-{i}", "seed": i, "final_val_loss": 3.25 + i / 1000,
                             "notes": f'writer {writer}, row "{i}"', "not_a_column": "dropped"})


def test_concurrent_appends_keep_one_header_and_every_row(tmp_path: Path):
    path = tmp_path / "experiments" / "results.csv"
    ctx = mp.get_context("fork")  # no torch work in the children: forking is cheap and safe here
    barrier = ctx.Barrier(WRITERS)
    procs = [ctx.Process(target=_append_rows, args=(str(path), w, barrier)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(RESULTS_COLUMNS)
    assert sum(ln == lines[0] for ln in lines) == 1
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == WRITERS * ROWS == len(lines) - 1
    assert all(None not in r and len(r) == len(RESULTS_COLUMNS) for r in rows)  # no torn or merged rows
    assert sorted(r["run_id"] for r in rows) == sorted(f"w{w}-{i}" for w in range(WRITERS) for i in range(ROWS))
    for r in rows:
        w, i = map(int, r["run_id"][1:].split("-"))
        assert r["notes"] == f'writer {w}, row "{i}"' and int(r["seed"]) == i
        assert float(r["final_val_loss"]) == 3.25 + i / 1000


def test_append_waits_for_the_lock_of_another_writer(tmp_path: Path):
    """The deterministic half of the concurrency test: a writer blocks while another holds the lock
    (without it, two first writers could both see an empty file and both write the header)."""
    path = tmp_path / "results.csv"
    ctx = mp.get_context("fork")
    with open(path, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = ctx.Process(target=append_result, args=(str(path), {"run_id": "late"}))
        proc.start()
        proc.join(0.5)
        assert proc.is_alive() and path.stat().st_size == 0
        fcntl.flock(held, fcntl.LOCK_UN)
    proc.join(10)
    assert proc.exitcode == 0
    assert path.read_text().splitlines()[1].startswith('"late",')


# ---------------------------------------------------------------- the log file
VAL = re.compile(r"^step:(\d+)/(\d+) val_loss:(\d+\.\d{4}) train_time:(\d+)ms step_avg:(nan|\d+\.\d{2})ms$")
TRAIN = re.compile(r"^step:(\d+)/(\d+) train_loss:(\d+\.\d{4}) train_time:(\d+)ms step_avg:(nan|\d+\.\d{2})ms$")

# Lines of the ModernArch record's own log (dabaaddd-....txt): the patterns are the reference's format.
REFERENCE_LINES = """\
step:0/5100 val_loss:16.0058 train_time:278ms step_avg:nanms
step:12/5100 train_loss:6.8756 train_time:353ms step_avg:nanms
step:13/5100 train_loss:6.7598 train_time:530ms step_avg:176.69ms
step:5100/5100 val_loss:3.2741 train_time:910546ms step_avg:178.89ms"""


def test_patterns_match_the_reference_log():
    kinds = [bool(VAL.match(ln)) for ln in REFERENCE_LINES.splitlines()]
    assert kinds == [True, False, False, True]
    assert all(TRAIN.match(ln) for ln in REFERENCE_LINES.splitlines()[1:3])


@pytest.fixture(scope="module")
def log_lines(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    cfg = data_cfg(tmp_path_factory.mktemp("log"), num_iterations=14, warmdown_iters=4, val_every=5)
    assert train(cfg, NullTracker(), env=single_env()).status == "FINISHED"
    return (Path(cfg.run.out_dir) / "logs" / "run.txt").read_text().splitlines()


def test_header_has_the_reference_structure(log_lines: list[str]):
    seps = [i for i, ln in enumerate(log_lines) if ln == SEP]
    assert len(seps) == 3 and seps[0] == 0
    code = "\n".join(log_lines[1:seps[1]])
    assert "# ---- trainer/loop.py" in code and "def train(" in code  # the trainer's source, as the reference logs its own
    env = log_lines[seps[1] + 1:seps[2]]
    running = [i for i, ln in enumerate(env) if ln.startswith("Running pytorch")]
    assert len(running) == 1
    assert env[running[0]] == f"Running pytorch {torch.version.__version__} compiled for CUDA {torch.version.cuda}"
    assert env[running[0] + 1] == "nvidia-smi:"


def test_step_lines_have_the_reference_formats(log_lines: list[str]):
    body = log_lines[[i for i, ln in enumerate(log_lines) if ln == SEP][2] + 1:]
    steps = [ln for ln in body if ln.startswith("step:")]
    # only the peak-memory line follows (the reference prints that one to the console)
    assert body[len(steps):] == ["peak memory consumption: 0 MiB"]
    parsed = []
    for ln in steps:
        m = VAL.match(ln) or TRAIN.match(ln)
        assert m, ln
        parsed.append(("val" if "val_loss" in ln else "train", int(m[1]), int(m[2]), m[5]))
    order = [(k, s) for k, s, _, _ in parsed]
    expected = [("val", 0)]
    for s in range(1, 15):
        expected.append(("train", s))
        if s % 5 == 0 or s == 14:
            expected.append(("val", s))
    assert order == expected
    assert all(n == 14 for _, _, n, _ in parsed)
    # the reference's clock: reset at step 10, timed_steps = NaN up to step 11, so train lines
    # through step:12 and val lines through step 11 print nan; later ones a number
    for kind, step, _, avg in parsed:
        early = step <= 12 if kind == "train" else step <= 11
        assert (avg == "nan") == early, (kind, step, avg)


def test_nvidia_smi_runs_in_the_background_and_its_output_reaches_the_header(tmp_path, monkeypatch):
    from trainer.runlog import header, start_nvidia_smi

    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nsleep 2\necho 'GPU 0: Fake H200'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    import time

    t0 = time.perf_counter()
    smi = start_nvidia_smi()
    assert time.perf_counter() - t0 < 1.0  # started, not waited for (it sleeps 2 s; margin for a loaded CI machine)
    assert "nvidia-smi:\nGPU 0: Fake H200\n" in header({"a": 1}, "abc", False, smi())
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert start_nvidia_smi()() == "(nvidia-smi not available)\n"
