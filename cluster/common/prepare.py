"""What every backend shares: spec -> trials (with chained values resolved), input checks before
anything is written, the stale-run cleanup, and the backend availability check."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.common.delivery import deliver_pending
from cluster.common.state import TrialState, collect, split
from cluster.common.store import SweepStore, dead_launcher_marks
from cluster.common.trialdir import RUNS_ROOT, set_local_status
from sweeps.chain import Chain, StageReader, empty_store_resolver, mlflow_resolver, stage_reader
from sweeps.errors import SpecError
from sweeps.expand import Trial, expand
from sweeps.local_runs import LocalReader, local_reader, local_resolver, local_time_resolver
from sweeps.spec import SweepSpec, apply_spec_overrides, load_spec
from sweeps.time_of import TimeOf, mlflow_time_resolver
from trainer.console import note
from trainer.overrides import parse_kv
from trainer.record import read_json


@dataclass
class Prepared:
    spec: SweepSpec
    trials: list[Trial]
    store: SweepStore
    overrides: tuple[str, ...] = ()  # the command line's key=value (what a follow-up command must repeat)
    notes: tuple[str, ...] = ()  # where resolved time_of values came from (plan and dry runs print them)


def prepare(spec_path: str, overrides: list[str], uri: str | None, *, use_store: bool = True,
            root: Path = RUNS_ROOT) -> Prepared:
    """The spec's trials, chained and time_of values resolved: from MLflow where mlflow is installed
    (the source of truth), else from the local records under `root` (sweeps.local_runs)."""
    spec = load_spec(spec_path)
    spec, config_overrides = apply_spec_overrides(spec, parse_kv(overrides))
    store = SweepStore(uri, spec.experiment)
    notes: list[str] = []
    if has_chain(spec) and use_store and not store.enabled:
        # no mlflow here (a GPU machine): the earlier stage's records on this disk are the source
        local = local_reader(root)
        trials = expand(spec, overrides=config_overrides, resolve_chain=local_resolver(local, root),
                        resolve_time=local_time_resolver(local, root), notes=notes)
    elif has_chain(spec) and use_store and store.exists():
        # read-only: a dry run must show the values (and trial ids) that the real run will use
        read = stage_reader(store.client)
        refuse_unsynced(spec, read, local_reader(root), store.uri)
        trials = expand(spec, overrides=config_overrides, resolve_chain=mlflow_resolver(read),
                        resolve_time=mlflow_time_resolver(read), notes=notes)
    elif has_chain(spec) and use_store:
        refuse_unsynced(spec, None, local_reader(root), store.uri)
        trials = expand(spec, overrides=config_overrides, resolve_chain=empty_store_resolver(), notes=notes)
    else:
        trials = expand(spec, overrides=config_overrides, notes=notes)
    return Prepared(spec, trials, store, tuple(overrides), tuple(notes))


PINNED_ENV = "GATESWEEP_EXPECT_TRIALS"  # set by cluster.slurm.node_jobs in each node job


def check_pinned(prep: Prepared, env: Mapping[str, str] = os.environ) -> None:
    """A node job runs exactly the trials it was submitted for: the spec expanded again in the job must
    give the same trial ids (a chained value may have changed since the submission)."""
    path = env.get(PINNED_ENV)
    if not path:
        return
    want = set((read_json(Path(path)) or {}).get("trial_ids", []))
    have = {t.trial_id for t in prep.trials}
    if want != have:
        raise SpecError(f"{prep.spec.path}: this node job was submitted for {len(want)} trial(s) ({path}) but the spec "
                        f"now expands to {len(have)} ({len(have - want)} not submitted, {len(want - have)} gone): the "
                        "spec or a chained value changed since the submission; nothing was run here. Submit again: "
                        f"gatesweep run {prep.spec.path} --backend slurm")


def with_search(prep: Prepared) -> Prepared:
    """A spec with a `search:` block runs its sampled trials (on Ray), not its base design points: the
    trials that `plan` and `status` must show."""
    if not prep.spec.search:
        return prep
    from cluster.common.search import parse_search, search_trials

    return Prepared(prep.spec, search_trials(parse_search(prep.spec), prep.trials), prep.store, prep.overrides,
                    prep.notes)


def has_chain(spec: SweepSpec) -> bool:
    return bool(chain_sources(spec))


def chain_sources(spec: SweepSpec) -> list[str]:
    """The stages that the spec's chained and time_of values come from."""
    values = list(spec.base_dict.values()) + [v for _, vs in spec.grid for v in vs]
    values += [v for p in spec.include for _, v in p.values]
    return list(dict.fromkeys(v.source for v in values if isinstance(v, (Chain, TimeOf))))


def refuse_unsynced(spec: SweepSpec, read: StageReader | None, local: LocalReader, uri: str) -> None:
    """A source stage with runs in the local records but none in the tracking store (`read`; None: the
    store does not exist yet) has not been synced: refuse rather than take the fallback."""
    for stage in chain_sources(spec):
        try:  # the store first: `read` is cached for the resolver, and a synced stage needs no local read
            in_store = bool(read(stage)[0]) if read is not None else False
        except Exception:  # noqa: BLE001 - the resolver reports a store that cannot be read
            continue
        if in_store:
            continue
        records = local(stage)
        if records.runs:
            dirs = " ".join(records.dirs)
            raise SpecError(f"{spec.path}: stage '{stage}' has {len(records.runs)} runs in the local records ({dirs}) but none in "
                            f"the tracking store {uri}: deliver them first (gatesweep sync {dirs}), then run again")


def preflight_trials(trials: list[Trial], spec_path: str | None = None) -> None:
    """Data files and batch arithmetic of every distinct data setup, before any run is created.
    With `spec_path`, an error names the spec (and the design point) it comes from."""
    import torch

    from trainer.build import preflight
    from trainer.dist import DistEnv
    from trainer.errors import GatesweepError

    seen: set[tuple[Any, ...]] = set()
    for t in trials:
        d = t.config.data
        key = (d.train_files, d.val_files, d.batch_size, d.device_batch_size, d.sequence_length, d.val_tokens,
               t.resources.world_size, t.config.model.vocab_size)
        if key in seen:
            continue
        seen.add(key)
        try:
            preflight(t.config, DistEnv(0, 0, t.resources.world_size, torch.device("cpu")))
        except GatesweepError as e:
            if spec_path is None:
                raise
            raise type(e)(f"{spec_path} ({t.label or 'base'}): {e}") from None


def states_for(prep: Prepared, *, root: Path = RUNS_ROOT, alive: Any = None, use_store: bool = True
               ) -> list[TrialState]:
    """`use_store=False`: the local records only (a first look that a later, locked one confirms)."""
    store = prep.store if prep.store.enabled and use_store else None
    return collect(prep.trials, store, root=root, alive=alive)


def retire_stale(states: list[TrialState], store: SweepStore) -> int:
    """Runs left RUNNING by a dead process are marked KILLED (locally and in MLflow) and rerun."""
    n = 0
    for s in states:
        if s.status == "STALE":
            set_local_status(s.run_dir, "KILLED", s.reason)
            if store.enabled and s.mlflow_run_id:
                store.mark(s.mlflow_run_id, "KILLED", s.reason)
            s.status = "KILLED"
            n += 1
    return n


def recover(states: list[TrialState], store: SweepStore, spec: str, *, root: Path = RUNS_ROOT,
            search: bool = True) -> None:
    """What a dead launcher left undone, on every run of a spec (also one with nothing left to train):
    deliver the ended trials' records it had not delivered, and mark its sweep run KILLED. `search`:
    look in the store for dead launchers' sweep runs even where no mark says so (a run that trains
    reaches the store anyway); else only a dead launcher's mark or a delivery makes it reach the store."""
    if not store.enabled:
        return
    delivered, failed = deliver_pending(states, store)
    if delivered:
        note(f"delivered {delivered} ended trial record(s) that a previous launcher had not sent to MLflow")
    marks = dead_launcher_marks(root / spec)
    if failed or not (search or delivered or marks):
        return
    if store.retire_stale_parents(spec, root / spec):
        note("a sweep run left RUNNING by a dead launcher was marked KILLED")


__all__ = ["Prepared", "prepare", "check_pinned", "with_search", "preflight_trials", "states_for", "retire_stale", "recover",
           "split"]
