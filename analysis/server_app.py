"""`mlflow server --app-name gatesweep`: MLflow's tracking server, every route of it as is, plus
read-only routes that give `gatesweep table` / `report` what they read from a sqlite file
(analysis.store_sql, the same queries) - so a server store is as fast as a file, and has a state.

Why. MLflow's REST search has no column projection and no change counter: at 10,000 runs the server
builds ORM objects for 40 s, and nothing tells a client that a store is unchanged. Here the server
reads its own backend file with store_sql (one query per table) and hands back its state token.

Routes (GET only, JSON; NaN as `NaN`; a bad query is a 400 that names the fix; any other method 405):
    /gatesweep/api/v1/state      -> {"state": token or null}
    /gatesweep/api/v1/runs       ?kind=trial &experiment=NAME... &stage=S... &spec=X
                                 -> {"state", "missing_experiment", "strings", "runs"} (pack_runs)
    /gatesweep/api/v1/histories  ?run_id=ID... (at most HISTORY_RUNS) &key=K...
                                 -> {"rows": [[run index, key index, step, value, timestamp], ...]}
The backend store is the server's --backend-store-uri; one that is not a sqlite file answers 501
(the client then reads through MLflow's search, as without this app).

Registered as the `mlflow.app` entry point `gatesweep` (pyproject.toml). Nothing happens on import:
Flask and MLflow are imported by `create_app`, which the server's workers call.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Sequence
from typing import Any

from analysis import store_sql
from analysis.store_sql import StoredRun
from trainer.record import sqlite_path

PREFIX = "/gatesweep/api/v1"
HISTORY_RUNS = 200  # run ids per history request: its URL stays under the HTTP server's 16 KiB line limit
MAX_KEYS = 20
BACKEND_ENV = "_MLFLOW_SERVER_FILE_STORE"  # mlflow.server.constants.BACKEND_STORE_URI_ENV_VAR
_RUN_ID = re.compile(r"^[a-zA-Z0-9][\w\-]{0,255}$")  # MLflow's run id check
_KINDS = ("trial", "sweep")


class BadQuery(ValueError):
    """A query the routes refuse (400); the message names the fix."""


def create_app(app: Any = None) -> Any:
    """MLflow's server app with the routes added: the Flask app, or (uvicorn, MLflow's default) the
    FastAPI app that mounts it, as MLflow's own `basic-auth` app does."""
    from flask import Blueprint
    from mlflow.environment_variables import _MLFLOW_SGI_NAME
    from mlflow.server import app as mlflow_app
    from mlflow.server.handlers import _add_static_prefix

    app = app if app is not None else mlflow_app
    routes = Blueprint("gatesweep", __name__)
    for name, view in (("state", _state), ("runs", _runs), ("histories", _histories)):
        routes.add_url_rule(_add_static_prefix(f"{PREFIX}/{name}"), f"gatesweep_{name}", _answer(view), methods=["GET"])
    app.register_blueprint(routes)
    if _MLFLOW_SGI_NAME.get() == "uvicorn":
        from mlflow.server.fastapi_app import create_fastapi_app

        return create_fastapi_app(app)
    return app


def _answer(view):
    """The view as a Flask handler: its dict as JSON, BadQuery as 400, no sqlite backend as 501, a
    file SQL cannot read as 503 (the client reads through MLflow then)."""
    def handler():
        from flask import Response, request

        status = 200
        try:
            path = sqlite_path(os.environ.get(BACKEND_ENV))
            if path is None:
                status, body = 501, _error("NOT_IMPLEMENTED", "the gatesweep routes read a sqlite backend store only")
            else:
                body = view(path, request.args)
        except BadQuery as e:
            status, body = 400, _error("INVALID_PARAMETER_VALUE", str(e))
        except sqlite3.Error as e:
            status, body = 503, _error("TEMPORARILY_UNAVAILABLE", f"SQL read failed ({type(e).__name__}: {e})")
        return Response(json.dumps(body), status=status, mimetype="application/json")
    return handler


def _error(code: str, message: str) -> dict[str, str]:
    return {"error_code": code, "message": message}


def _state(path, args) -> dict[str, Any]:
    _only(args, ())
    return {"state": store_sql.state(path)}


def _runs(path, args) -> dict[str, Any]:
    _only(args, ("kind", "experiment", "stage", "spec"))
    kind = args.get("kind", "trial")
    if kind not in _KINDS:
        raise BadQuery(f"kind={kind!r}: use one of {', '.join(_KINDS)}")
    names, stages = _texts(args, "experiment") or None, _texts(args, "stage") or [None]
    spec = _texts(args, "spec")
    if len(spec) > 1:
        raise BadQuery("spec given twice; give at most one")
    state = store_sql.state(path)  # before the read: a write meanwhile gives another state next time
    with store_sql.connect(path) as con:
        con.execute("BEGIN")  # one snapshot for every query
        missing, runs = store_sql.read_runs(con, names, store_sql.selection(kind, stages, spec[0] if spec else None))
    return {"state": state, "missing_experiment": missing, **pack_runs(runs)}


def _histories(path, args) -> dict[str, Any]:
    _only(args, ("run_id", "key"))
    run_ids, keys = list(dict.fromkeys(_texts(args, "run_id"))), list(dict.fromkeys(_texts(args, "key")))
    if not run_ids or not keys:
        raise BadQuery("give run_id=ID (repeatable) and key=METRIC (repeatable)")
    if len(run_ids) > HISTORY_RUNS or len(keys) > MAX_KEYS:
        raise BadQuery(f"at most {HISTORY_RUNS} run ids and {MAX_KEYS} keys a request; split the request")
    if bad := [r for r in run_ids if not _RUN_ID.fullmatch(r)]:
        raise BadQuery(f"run_id {bad[0][:80]!r} is not an MLflow run id")
    run_pos, key_pos = {r: i for i, r in enumerate(run_ids)}, {k: i for i, k in enumerate(keys)}
    rows = store_sql.metric_rows(path, run_ids, keys)
    return {"rows": [[run_pos[r], key_pos[k], s, v, t] for r, k, s, v, t in rows]}


def _only(args, allowed: Sequence[str]) -> None:
    if unknown := sorted(set(args) - set(allowed)):
        raise BadQuery(f"unknown parameter {unknown[0]!r}; valid: {', '.join(allowed) or 'none'}")


def _texts(args, name: str) -> list[str]:
    values = args.getlist(name)
    if any(not v for v in values):
        raise BadQuery(f"{name} is empty; give a value or leave it out")
    return values


def pack_runs(runs: Sequence[StoredRun]) -> dict[str, Any]:
    """Runs as JSON-able lists: each distinct key and value once in `strings`, runs by index into it
    (10,000 runs share most of them: a tenth of the bytes)."""
    strings: dict[Any, int] = {}

    def ix(text: Any) -> int:
        return strings.setdefault(text, len(strings))
    packed = [[r.run_id, r.status, r.start_time, [ix(x) for kv in r.tags.items() for x in kv],
               [ix(x) for kv in r.params.items() for x in kv], [x for k, v in r.metrics.items() for x in (ix(k), v)]]
              for r in runs]
    return {"strings": list(strings), "runs": packed}


def unpack_runs(data: dict[str, Any]) -> list[StoredRun]:
    """pack_runs' runs back (one string object per distinct key and value, as store_sql gives them)."""
    s = data["strings"]

    def pairs(flat: list, value=s.__getitem__) -> dict:
        return {s[flat[i]]: value(flat[i + 1]) for i in range(0, len(flat), 2)}
    return [StoredRun(rid, status, start, pairs(tags), pairs(params), pairs(metrics, lambda v: v))
            for rid, status, start, tags, params, metrics in data["runs"]]
