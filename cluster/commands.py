"""`gatesweep plan | run | status | sync | warmup`: thin glue over the sweep, state and backends."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from cluster.compile_cache import cache_env, megacache_path
from cluster.local import check_local, run_trials, trainer_command, visible_gpus
from cluster.state import DONE, counts, split
from cluster.store import SWEEP_RECORDS, clean_env, sync_sweep_record
from cluster.sweep import check_backend, preflight_trials, prepare, retire_stale, states_for, with_search
from cluster.trialdir import RUNS_ROOT, trial_dir
from sweeps.expand import Trial, gpu_hours


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


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
    print(_table(rows, ["#", "trial_id", "design", "seed", "iters", "lr", "status"]))
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
        uri: str | None, wait: bool, slurm_opts: dict[str, Any], max_looks: int | None = None) -> int:
    prep = prepare(spec_path, overrides, uri)
    spec = prep.spec
    backend = backend or spec.default_backend
    if not (dry_run and backend == "slurm"):  # a Slurm dry run prints its sbatch scripts on any machine
        check_backend(backend)
    if dry_run:
        for note in prep.notes:
            print(f"# resolved: {note}")

    def once(p: Any) -> int:
        if backend == "slurm":
            from cluster.slurm_launch import run_slurm

            return run_slurm(p, dry_run=dry_run, wait=wait, opts=slurm_opts)
        if backend == "ray":
            from cluster.ray_launch import run_ray

            return run_ray(p, dry_run=dry_run, max_parallel=max_parallel, overrides=overrides, slurm_opts=slurm_opts)
        return run_local(p, dry_run=dry_run, max_parallel=max_parallel)

    if spec.sequential is not None:
        from cluster.sequential import run_sequential

        return run_sequential(prep, once, dry_run=dry_run, loop=backend != "slurm" or wait, max_looks=max_looks)
    return once(prep)


def run_local(prep: Any, *, dry_run: bool, max_parallel: int | None) -> int:
    spec = prep.spec
    local = spec.backend_options("local")
    parallel = int(local.get("max_parallel", 1)) if max_parallel is None else max_parallel
    nproc = max(spec.resources.gpus_per_node, 1) * spec.resources.nodes
    per_gpu = int(local.get("trials_per_gpu", 1))
    check_local(nproc, max_parallel=parallel, trials_per_gpu=per_gpu, gpus=visible_gpus())
    if dry_run:
        for t in prep.trials:
            d = trial_dir(t)
            print(f"# trial {t.index} {t.trial_id} {t.label} seed={t.seed}")
            print(shlex.join(trainer_command(d / "trial.json", nproc)))  # safe to paste into a shell
        print(f"{len(prep.trials)} trials, up to {parallel} at a time; "
              f"{gpu_hours(prep.trials, spec.estimate_ms_per_step):.1f} GPU-hours estimated")
        return 0
    states = states_for(prep)
    todo, done, busy = split(states)
    if done:
        print(f"skipping {len(done)} finished trial(s)")
    if busy:
        print(f"{len(busy)} trial(s) are running in another process; leaving them alone")
    if not todo:
        print(f"nothing to run: {len(done)}/{len(states)} trials finished")
        return 0
    preflight_trials([s.trial for s in todo], spec.path)  # data and batch arithmetic, before anything is written
    stale = retire_stale(states, prep.store)
    if stale:
        print(f"{stale} trial(s) left RUNNING by a dead process: marked KILLED, running again")
    store = prep.store
    if store.enabled and store.retire_stale_parents(spec.name):
        print("a sweep run left RUNNING by a dead launcher was marked KILLED")
    existing = store.trial_runs() if store.enabled else {}
    store.start_parent(spec=spec.name, stage=spec.stage, backend="local", n_trials=len(todo), spec_path=spec.path,
                       trial_ids=[t.trial_id for t in prep.trials])
    status = "FINISHED"
    # `kill PID` (SIGTERM) stops a sweep like Ctrl-C: trials checkpoint, records and the sweep run say KILLED
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        results = run_trials(todo, store, max_parallel=parallel, nproc=nproc, title=spec.name, existing=existing,
                             trials_per_gpu=per_gpu)
    except KeyboardInterrupt:
        status = "KILLED"
        print("interrupted: running trials were stopped and marked KILLED; rerun the same command to resume",
              file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        store.finish_parent(status, RUNS_ROOT / spec.name)
    bad = {k: v for k, v in results.items() if v not in DONE}
    print(f"sweep {spec.name}: {len(results) - len(bad)} finished, {len(bad)} not "
          f"({', '.join(sorted(set(bad.values()))) or '-'}); records in {RUNS_ROOT / spec.name}")
    return 0 if not bad else 1


def _interrupt(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean stop short
    raise KeyboardInterrupt


def status(spec_path: str, overrides: list[str], *, uri: str | None) -> int:
    prep = with_search(prepare(spec_path, overrides, uri))
    from cluster.slurm_state import SlurmView

    slurm = SlurmView(prep.trials, with_sacct=True)  # one squeue (+ one sacct) call for all trials
    states = states_for(prep, alive=slurm.alive)
    from cluster.progress import last_step

    seq = _sequential(prep, states)
    notes = _trial_notes(seq)
    rows = []
    for s in states:
        step = last_step(s.run_dir)
        rows.append([s.trial.trial_id, s.trial.label or "-", str(s.trial.seed), _status(s, notes),
                     f"{step if step is not None else '-'}/{s.trial.config.run.num_iterations}",
                     " ".join(x for x in (slurm.note(s.run_dir), s.reason) if x)[:90]])
    print(_table(rows, ["trial_id", "design", "seed", "status", "step", "note"]))
    print("  ".join(f"{k}: {v}" for k, v in sorted(counts(states).items())))
    if seq:
        print(_seq_summary(seq))
    return 0


def _sequential(prep: Any, states: list[Any]) -> Any:
    """The rule's state from these records (None for a fixed-seed spec)."""
    if prep.spec.sequential is None:
        return None
    from cluster.sequential import evaluate

    return evaluate(prep, states)


def _trial_notes(seq: Any) -> dict[str, str]:
    if seq is None:
        return {}
    from cluster.sequential import trial_notes

    return trial_notes(seq)


def _seq_summary(seq: Any) -> str:
    from cluster.sequential import summary_lines

    return "\n".join(summary_lines(seq))


def _status(s: Any, notes: dict[str, str]) -> str:
    note = notes.get(s.trial.trial_id)
    if note == "not needed" and not s.status:
        return "NOT NEEDED (stopped)"
    return f"{s.status or 'PENDING'} ({note})" if note and not s.status else (s.status or "PENDING")


def sync(paths: list[str], uri: str | None) -> int:
    """Deliver local records (e.g. from GPU nodes without network) to MLflow."""
    from trainer.mlflow_sync import pending, sync_record

    roots = [Path(p) for p in paths] or [RUNS_ROOT]
    missing = [str(p) for p in roots if paths and not p.exists()]
    if missing:
        from trainer.errors import DataError

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
    n_ok = n_fail = 0
    for t in tracks:
        if not pending(t):
            continue
        try:
            res = sync_record(t, uri)
            n_ok += 1
            print(f"synced {t}: run {res['run_id']}, {res['metrics_delivered']} metric points, status {res['status']}")
        except Exception as e:  # noqa: BLE001 - report and continue with the others
            n_fail += 1
            print(f"failed {t}: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
    n_sweep_fail = 0
    for f in sweeps:  # after the trials: a sweep run ends once its trials' records are in
        try:
            print(sync_sweep_record(f, uri))
        except Exception as e:  # noqa: BLE001 - report and continue with the others
            n_sweep_fail += 1
            print(f"failed {f}: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
    print(f"sync: {n_ok} record(s) delivered, {n_fail} failed, {len(tracks) - n_ok - n_fail} already up to date")
    return 0 if n_fail + n_sweep_fail == 0 else 1


def warmup_trial(trial: Trial, sweep_dir: Path) -> int:
    """Fill the sweep's compile cache: the first trial's graphs, 2 steps, one val batch; and save
    what it compiled as the sweep's portable cache (megacache.bin) for nodes with empty caches."""
    d = trial.config.data
    nproc = max(trial.resources.gpus_per_node, 1) * trial.resources.nodes
    out = sweep_dir / ".warmup"
    cfg = trial.config.flat() | {"num_iterations": 2, "warmup_iters": 0, "warmdown_iters": 0, "val_every": 0,
                                 "val_tokens": d.device_batch_size * d.sequence_length * nproc,
                                 "out_dir": str(out), "run_id": "warmup", "results_csv": str(out / "results.csv"),
                                 "compile_cache": "", "save_compile_cache": str(megacache_path(sweep_dir))}
    out.mkdir(parents=True, exist_ok=True)
    (out / "trial.json").write_text(json.dumps({"config": cfg, "trial": {}}))
    env = clean_env() | cache_env(sweep_dir) | {"GATESWEEP_TRACKING": "local"}
    import shutil

    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return subprocess.call(trainer_command(out / "trial.json", nproc), env=env)


def warmup(spec_path: str, overrides: list[str], uri: str | None) -> int:
    prep = prepare(spec_path, overrides, uri, use_store=False)
    code = warmup_trial(prep.trials[0], RUNS_ROOT / prep.spec.name)
    sweep_dir = RUNS_ROOT / prep.spec.name
    mega = megacache_path(sweep_dir)
    print(f"warmup {'done' if code == 0 else f'failed (exit {code})'}: cache in "
          f"{cache_env(sweep_dir)['TORCHINDUCTOR_CACHE_DIR']}"
          + (f", portable cache {mega}" if mega.is_file() else ""))
    return code


__all__ = ["plan", "run", "status", "sync", "warmup", "os"]
