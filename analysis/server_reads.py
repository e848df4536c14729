"""A server store's runs, histories and state through the routes of `mlflow server --app-name gatesweep`
(analysis.server_app): the rows a sqlite file gives (analysis.store_sql), read by the server itself.

A server without the routes (a plain `mlflow server`: 404), or whose backend they cannot read (not a
sqlite file: 501; a file SQL cannot read: 503), is read through MLflow's search as before: each
function returns None then, and the first refusal prints one line that names the fix. The state
route is asked first, with a short timeout: a server that does not answer it at once is read as before.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from analysis.server_app import HISTORY_RUNS, PREFIX, unpack_runs
from analysis.store_sql import StoredRun

PROBE_TIMEOUT_S = 5.0  # the state route answers in milliseconds
READ_TIMEOUT_S = 300.0  # the runs of a large store: seconds
FIX = "start it with `mlflow server --app-name gatesweep ...` (make mlflow-up does)"
_REFUSED: set[str] = set()  # servers whose routes refused in this process: read through MLflow, said once


def state(uri: str) -> str | None:
    """The store's state token (equal tokens: equal contents), or None (no routes, or no cheap state)."""
    body = _get(uri, "state", [], PROBE_TIMEOUT_S)
    return body.get("state") if body else None


def runs(uri: str, names: Sequence[str] | None, stages: Sequence[str | None],
         spec: str | None) -> tuple[str | None, list[StoredRun]] | None:
    """store_sql.read_runs of the trial runs, as the server reads them: (None, runs), (an experiment
    name that does not exist, []), or None when the routes cannot answer."""
    query = [("kind", "trial"), *(("experiment", n) for n in names or ()),
             *(("stage", s) for s in stages if s is not None), *([("spec", spec)] if spec else [])]
    body = _get(uri, "runs", query, READ_TIMEOUT_S) if _get(uri, "state", [], PROBE_TIMEOUT_S) else None
    return (body["missing_experiment"], unpack_runs(body)) if body else None


def histories(uri: str, run_ids: list[str], keys: list[str]) -> list[tuple] | None:
    """store_sql.metric_rows of the runs (distinct ids and keys), as the server reads them, or None
    when the routes cannot answer."""
    if _get(uri, "state", [], PROBE_TIMEOUT_S) is None:
        return None
    rows: list[tuple] = []
    for i in range(0, len(run_ids), HISTORY_RUNS):
        chunk = run_ids[i:i + HISTORY_RUNS]
        body = _get(uri, "histories", [*(("run_id", r) for r in chunk), *(("key", k) for k in keys)], READ_TIMEOUT_S)
        if body is None:
            return None
        rows += [(chunk[r], keys[k], s, v, t) for r, k, s, v, t in body["rows"]]
    return rows


def _get(uri: str, route: str, query: list[tuple[str, str]], timeout: float) -> dict[str, Any] | None:
    """The route's JSON answer, or None (after one line on stderr) when the server refuses it."""
    if uri in _REFUSED:
        return None
    url = f"{uri.rstrip('/')}{PREFIX}/{route}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as e:
        why = (f"{uri} is a plain `mlflow server`; for a fast, cached table {FIX}" if e.code == 404
               else f"the gatesweep routes of {uri} answered {e.code} ({_message(e)})")
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(e, OSError) and not isinstance(reason, TimeoutError):
            return None  # no server there: analysis.fetch.check_reachable names it
        why = f"the gatesweep routes of {uri} did not answer ({reason})"
    _REFUSED.add(uri)
    print(f"note: {why}; reading every run through MLflow's search instead (~4 s per 1,000 runs, again on "
          "each call)", file=sys.stderr)
    return None


def _message(e: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(e.read()).get("message", ""))[:200]
    except (OSError, ValueError, AttributeError):
        return e.reason
