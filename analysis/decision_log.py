"""A sequential sweep's decision log (`sequential.json`, analysis.sequential): where it is read from.

Kept apart from the rule itself (analysis.sequential, numpy/scipy) so that a table's cache key can
name the log without importing the statistics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def decisions_for_spec(spec: str | Path, *, runs_root: str | Path = "runs",
                       tracking_uri: str | None = None) -> dict[str, Any] | None:
    """The decision log of a spec's sequential sweep, or None for a spec without one. `spec`: the spec
    file or its name. Reads runs/<name>/sequential.json, else (records elsewhere) the `sequential.json`
    artifact of the spec's newest sweep run in MLflow."""
    import json

    path = Path(spec)
    name = str(spec)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        from trainer import yamlsafe

        name = str((yamlsafe.load(path.read_text(encoding="utf-8")) or {}).get("name", path.stem))
    local = Path(runs_root) / name / LOG_NAME
    if local.is_file():
        return json.loads(local.read_text())
    return _log_from_mlflow(name, tracking_uri)


LOG_NAME = "sequential.json"


def _log_from_mlflow(spec_name: str, tracking_uri: str | None) -> dict[str, Any] | None:
    import importlib.util
    import json
    import os
    import tempfile

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri or importlib.util.find_spec("mlflow") is None:
        return None
    known, log = _log_from_sqlite(spec_name, uri)
    if known:
        return log
    from mlflow.tracking import MlflowClient

    from sweeps.mlflow_runs import newest

    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    run = newest(client, exps, f"tags.`gatesweep.kind` = 'sweep' and tags.spec = '{spec_name}' and "
                               "tags.`gatesweep.sequential` = 'true'")
    if run is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run.info.run_id, LOG_NAME, tmp)
        return json.loads(Path(path).read_text())


def _log_from_sqlite(spec_name: str, uri: str) -> tuple[bool, dict[str, Any] | None]:
    """(True, the log or None) read with SQL and from the artifact's file, when the store is a sqlite
    file whose artifacts are on this filesystem; (False, None) when only MLflow can tell."""
    import json
    import sqlite3

    from analysis import store_sql
    from sweeps.store_file import sqlite_path

    path = sqlite_path(uri)
    if path is None:
        return False, None
    try:
        with store_sql.connect(path) as con:
            exp_ids = list(store_sql.experiment_ids(con, None))
            found = store_sql.newest_run(con, exp_ids, {"gatesweep.kind": "sweep", "spec": spec_name,
                                                        "gatesweep.sequential": "true"})
    except sqlite3.Error:
        return False, None
    if found is None:
        return True, None
    local = store_sql.local_artifact(found[1], LOG_NAME)
    if local is None or not local.is_file():
        return False, None  # MLflow's download decides (another artifact store, or an error to raise)
    return True, json.loads(local.read_text())
