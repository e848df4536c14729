"""`gatesweep plan | run | status | sync | warmup`: thin glue over the sweep, state and backends."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from cluster.backend import RunOptions, launcher
from cluster.common.command import trainer_command
from cluster.common.compile_cache import cache_env, graph_families, mark_warm, megacache_path
from cluster.common.prepare import (
    Prepared,
    check_pinned,
    prepare,
    states_for,
    with_search,
)
from cluster.common.state import counts
from cluster.common.store import SWEEP_RECORDS, SweepStore, clean_env, sync_sweep_record
from cluster.common.trialdir import RUNS_ROOT
from sweeps.errors import SpecError
from sweeps.expand import Trial, gpu_hours
from sweeps.text_table import text_table
from trainer.errors import DataError, ExitCode
from trainer.record import read_json


def plan(spec_path: str, overrides: list[str], *, as_json: bool, uri: str | None) -> int:
    prep = with_search(prepare(spec_path, overrides, uri))
    try:
        states = states_for(prep)
    except Exception as e:  # noqa: BLE001 - the plan is still useful without the store
        print(f"warning: tracking store not consulted ({e}); showing local records only", file=sys.stderr)
        prep.store.enabled = False
        states = states_for(prep)
    if as_json:
        out = [s.trial.to_json() | {"status": s.status or "PENDING"} for s in states]
        print(json.dumps(out, indent=1, sort_keys=True))
        return 0
    spec = prep.spec
    seq = _sequential(prep, states)
    notes = _trial_notes(seq)
    rows = [[str(t.index), t.trial_id, t.label or "-", str(t.seed), str(t.config.run.num_iterations),
             f"{t.config.optim.learning_rate:g}", _status(s, notes)] for s, t in ((s, s.trial) for s in states)]
    print(f"spec {spec.name} (stage {spec.stage}, {spec.path}): {len(prep.trials)} trials, "
          f"{spec.resources.nodes} node(s) x {spec.resources.gpus_per_node} GPU(s) each, experiment {spec.experiment}")
    print(text_table(["#", "trial_id", "design", "seed", "iters", "lr", "status"], rows))
    hours = gpu_hours(prep.trials, spec.estimate_ms_per_step)
    todo = [s.trial for s in states if not s.done]
    print(f"estimate: {hours:.1f} GPU-hours for all trials ({gpu_hours(todo, spec.estimate_ms_per_step):.1f} "
          f"still to run) at {spec.estimate_ms_per_step:g} ms/step; finished: {sum(s.done for s in states)}/{len(states)}")
    for note in prep.notes:
        print(f"resolved: {note}")
    if seq:
        print(f"(sequential seeds: the estimate counts every configuration at max = {spec.sequential.max} seeds)")  # type: ignore[union-attr]
        print(_seq_summary(seq))
    if spec.search:
        print(f"note: the trials above are the `search:` block's samples (Ray runs them; `gatesweep run {spec.path} "
              "--backend ray --dry-run` shows the scheduler); the local and Slurm backends run the base design points")
    return 0


def run(spec_path: str, overrides: list[str], *, backend: str | None, dry_run: bool, max_parallel: int | None,
        uri: str | None, wait: bool, slurm_opts: dict[str, Any], max_looks: int | None = None,
        check: bool = False, as_json: bool = False) -> int:
    from trainer.record import sync_timeout

    sync_timeout()  # every trainer reads it: a bad value is one line here, not one failure per trial
    prep = prepare(spec_path, overrides, uri)  # chained values are read once per command
    check_pinned(prep)  # in a node job: the trials it was submitted for, or nothing
    if not as_json:
        return _run(prep, backend=backend, dry_run=dry_run, max_parallel=max_parallel, wait=wait,
                    slurm_opts=slurm_opts, max_looks=max_looks, check=check)
    # --json: the launcher's lines go to stderr; stdout is one JSON object, trial id -> status and job id
    with contextlib.redirect_stdout(sys.stderr):
        code = _run(prep, backend=backend, dry_run=dry_run, max_parallel=max_parallel, wait=wait,
                    slurm_opts=slurm_opts, max_looks=max_looks, check=check)
        # a fresh store: a dry run disables the one it was given (it must create nothing)
        after = dataclasses.replace(prep, store=SweepStore(prep.store.uri, prep.spec.experiment))
        states = states_for(with_search(after))
    print(json.dumps({s.trial.trial_id: _trial_json(s) for s in states}, indent=1, sort_keys=True))
    return code


def _trial_json(s: Any) -> dict[str, Any]:
    job = (read_json(s.run_dir / "slurm.json") or {}).get("job_id")
    return {"status": s.status or "PENDING", "job_id": job, "label": s.trial.label, "seed": s.trial.seed,
            "run_dir": str(s.run_dir), "mlflow_run_id": s.mlflow_run_id}


def _run(prep: Prepared, *, backend: str | None, dry_run: bool, max_parallel: int | None, wait: bool,
         slurm_opts: dict[str, Any], max_looks: int | None, check: bool) -> int:
    spec = prep.spec
    opts = RunOptions(dry_run=dry_run or check, check=check, wait=wait, max_parallel=max_parallel,
                      slurm=slurm_opts, overrides=prep.overrides)
    chosen = launcher(backend or spec.default_backend)
    if check and chosen.name != "slurm":
        raise SpecError(f"--check asks sbatch whether the jobs would be accepted: it applies to --backend slurm, "
                        f"not {chosen.name}; drop it or use --dry-run")
    chosen.available(opts)
    prep.store.check_spec(spec.name, spec.path, RUNS_ROOT / spec.name)  # one spec file per name
    if dry_run:
        for note in prep.notes:
            print(f"# resolved: {note}")
    if spec.sequential is not None:
        from cluster.common.sequential import run_sequential

        return run_sequential(prep, lambda p: chosen.run(p, opts), dry_run=opts.dry_run,
                              loop=chosen.name != "slurm" or wait, max_looks=max_looks)
    return chosen.run(prep, opts)


def status(spec_path: str, overrides: list[str], *, uri: str | None, as_json: bool = False) -> int:
    """Exit 1 when some trial FAILED (scripts poll this), else 0."""
    prep = with_search(prepare(spec_path, overrides, uri))
    from cluster.slurm.state import SlurmView

    slurm = SlurmView(prep.trials, with_sacct=True)  # one squeue (+ one sacct) call for all trials
    states = states_for(prep, alive=slurm.alive)
    from cluster.common.progress import last_step

    seq = _sequential(prep, states)
    notes = _trial_notes(seq)
    code = ExitCode.TRIALS_FAILED if any(s.status == "FAILED" for s in states) else ExitCode.OK
    if as_json:
        out = {s.trial.trial_id: _trial_json(s) | {"step": last_step(s.run_dir),
                                                    "num_iterations": s.trial.config.run.num_iterations,
                                                    "note": _status(s, notes), "reason": s.reason,
                                                    "slurm": slurm.note(s.run_dir)} for s in states}
        print(json.dumps(out, indent=1, sort_keys=True))
        return code
    rows = []
    for s in states:
        step = last_step(s.run_dir)
        rows.append([s.trial.trial_id, s.trial.label or "-", str(s.trial.seed), _status(s, notes),
                     f"{step if step is not None else '-'}/{s.trial.config.run.num_iterations}",
                     " ".join(x for x in (slurm.note(s.run_dir), s.reason) if x)[:90]])
    print(text_table(["trial_id", "design", "seed", "status", "step", "note"], rows))
    print("  ".join(f"{k}: {v}" for k, v in sorted(counts(states).items())))
    from cluster.slurm.node_jobs import live_node_jobs

    node_jobs = live_node_jobs(RUNS_ROOT / prep.spec.name)
    if node_jobs:  # backend.slurm.node_jobs: PENDING trials are theirs to take
        print(f"node jobs queued or running: {', '.join(node_jobs)} (they take the PENDING trials)")
    if seq:
        print(_seq_summary(seq))
    return code


def _sequential(prep: Any, states: list[Any]) -> Any:
    """The rule's state from these records (None for a fixed-seed spec)."""
    if prep.spec.sequential is None:
        return None
    from cluster.common.sequential import evaluate

    return evaluate(prep, states)


def _trial_notes(seq: Any) -> dict[str, str]:
    if seq is None:
        return {}
    from cluster.common.sequential import trial_notes

    return trial_notes(seq)


def _seq_summary(seq: Any) -> str:
    from cluster.common.sequential import summary_lines

    return "\n".join(summary_lines(seq))


def _status(s: Any, notes: dict[str, str]) -> str:
    note = notes.get(s.trial.trial_id)
    if note == "not needed" and not s.status:
        return "NOT NEEDED (stopped)"
    return f"{s.status or 'PENDING'} ({note})" if note and not s.status else (s.status or "PENDING")


def sync(paths: list[str], uri: str | None, *, as_json: bool = False) -> int:
    """Deliver local records (e.g. from GPU nodes without network) to MLflow; exit 1 if one failed."""
    roots = [Path(p) for p in paths] or [RUNS_ROOT]
    missing = [str(p) for p in roots if paths and not p.exists()]
    if missing:
        raise DataError(f"{', '.join(missing)}: no such run record; pass run directories (runs/<spec>/<trial_id>), "
                        "their track/ directories or a root such as runs/")
    tracks, sweeps = [], []
    for root in roots:
        if (root / "metrics.jsonl").exists() or (root / "status.json").exists():
            tracks.append(root)
        elif (root / "track").is_dir():
            tracks.append(root / "track")
        else:
            # hidden folders hold no runs to deliver: .warmup (the compile-cache filler), .snapshots
            tracks += sorted(p.parent for p in root.glob("**/track/status.json")
                             if not any(part.startswith(".") for part in p.relative_to(root).parts))
            sweeps += sorted(root.glob(f"**/{SWEEP_RECORDS}/*.json"))
    if as_json:  # the lines below go to stderr, the outcome to stdout as JSON
        with contextlib.redirect_stdout(sys.stderr):
            report = _sync(tracks, sweeps, uri)
        print(json.dumps(report, indent=1, sort_keys=True))
    else:
        report = _sync(tracks, sweeps, uri)
    return ExitCode.OK if not report["failed"] else ExitCode.TRIALS_FAILED


def _sync(tracks: list[Path], sweeps: list[Path], uri: str | None) -> dict[str, Any]:
    from sweeps.errors import StoreFileError
    from sweeps.mlflow_runs import resolve_uri
    from sweeps.store_file import ensure_store
    from trainer.mlflow_sync import pending, record_uri, sync_record

    report: dict[str, Any] = {"delivered": {}, "failed": {}, "up_to_date": [], "sweeps": {}}
    n_ok = n_fail = 0
    for t in tracks:
        try:
            target = resolve_uri(record_uri(t, uri))
            if not pending(t, target, ask_server=True):  # a server is asked whether it is still the record's store
                report["up_to_date"].append(str(t))
                continue
            ensure_store(target)  # a new sqlite store is made whole and by one process, as for `run`
            res = sync_record(t, target)
            report["delivered"][str(t)] = res
            n_ok += 1
            print(f"synced {t}: run {res['run_id']}, {res['metrics_delivered']} metric points, status {res['status']}")
        except StoreFileError:
            raise  # a damaged store: one line naming the file and the fix, not one failure per record
        except Exception as e:  # noqa: BLE001 - report and continue with the others
            n_fail += 1
            report["failed"][str(t)] = f"{type(e).__name__}: {str(e)[:200]}"
            print(f"failed {t}: {report['failed'][str(t)]}", file=sys.stderr)
    for f in sweeps:  # after the trials: a sweep run ends once its trials' records are in
        try:
            report["sweeps"][str(f)] = sync_sweep_record(f, uri)
            print(report["sweeps"][str(f)])
        except Exception as e:  # noqa: BLE001 - report and continue with the others
            report["failed"][str(f)] = f"{type(e).__name__}: {str(e)[:200]}"
            print(f"failed {f}: {report['failed'][str(f)]}", file=sys.stderr)
    print(f"sync: {n_ok} record(s) delivered, {n_fail} failed, {len(tracks) - n_ok - n_fail} already up to date")
    return report


def warmup_trial(trial: Trial, sweep_dir: Path, family: int = 1) -> subprocess.Popen:
    """Start filling the sweep's compile cache with one graph family: `trial`'s graphs, 2 steps, one val
    batch. The first family also saves what it compiled as the sweep's portable cache (megacache.bin)
    for nodes with empty caches."""
    d = trial.config.data
    nproc = max(trial.resources.gpus_per_node, 1) * trial.resources.nodes
    out = sweep_dir / (".warmup" if family == 1 else f".warmup-{family}")
    mega = str(megacache_path(sweep_dir)) if family == 1 else ""
    cfg = trial.config.flat() | {"num_iterations": 2, "warmup_iters": 0, "warmdown_iters": 0, "val_every": 0,
                                 "val_tokens": d.device_batch_size * d.sequence_length * nproc,
                                 "out_dir": str(out), "run_id": "warmup", "results_csv": str(out / "results.csv"),
                                 "compile_cache": "", "save_compile_cache": mega}
    out.mkdir(parents=True, exist_ok=True)
    (out / "trial.json").write_text(json.dumps({"config": cfg, "trial": {}}))
    env = clean_env() | cache_env(sweep_dir) | {"GATESWEEP_TRACKING": "local"}
    import shutil

    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return subprocess.Popen(trainer_command(out / "trial.json", nproc), env=env)


def warmup(spec_path: str, overrides: list[str], uri: str | None) -> int:
    """Compile every graph family of the spec (trials that differ in more than seeds, learning rates and
    schedule lengths), all at once: a sweep's trials then load graphs instead of compiling them."""
    prep = prepare(spec_path, overrides, uri, use_store=False)
    sweep_dir = RUNS_ROOT / prep.spec.name
    families = [prep.trials[i] for i in graph_families([t.config.flat() for t in prep.trials])]
    procs = [warmup_trial(t, sweep_dir, k) for k, t in enumerate(families, 1)]
    codes = [p.wait() for p in procs]
    code = max(codes)
    # trials of these families then start no compile worker pool (trainer key compile_threads=1)
    mark_warm(sweep_dir, [t.config.flat() for t, c in zip(families, codes) if c == 0])
    mega = megacache_path(sweep_dir)
    print(f"warmup {'done' if code == 0 else f'failed (exit {code})'}: {len(families)} graph "
          f"famil{'y' if len(families) == 1 else 'ies'} ({', '.join(t.label or 'base' for t in families)}); cache in "
          f"{cache_env(sweep_dir)['TORCHINDUCTOR_CACHE_DIR']}"
          + (f", portable cache {mega}" if mega.is_file() else ""))
    return code


__all__ = ["plan", "run", "status", "sync", "warmup"]
