"""The tracking store as the sweeps, launchers and analysis read it: where it is (the one default URI)
and the one paginated run search. mlflow is imported by the caller's client, never here at import.

The default store is `sqlite:///mlflow.db` in the working directory; `--tracking-uri` and
$MLFLOW_TRACKING_URI choose another.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

DEFAULT_URI = "sqlite:///mlflow.db"
PAGE = 1000  # MLflow's largest page of search_runs


def resolve_uri(explicit: str | None = None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the current directory."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def newest(client: Any, experiment_ids: Sequence[str], filter_string: str) -> Any | None:
    """The most recently started run of the experiments that matches the filter, or None."""
    if not experiment_ids:
        return None
    runs = client.search_runs(list(experiment_ids), filter_string, max_results=1,
                              order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def search_all(client: Any, experiment_ids: Sequence[str], filter_string: str, *,
               order_by: Sequence[str] = ("attributes.start_time ASC",)) -> Iterator[Any]:
    """Every run of the experiments that matches the filter, page after page (MlflowClient.search_runs
    returns at most one page per call)."""
    if not experiment_ids:
        return
    token = None
    while True:
        page = client.search_runs(list(experiment_ids), filter_string, max_results=PAGE, order_by=list(order_by),
                                  page_token=token)
        yield from page
        token = page.token
        if not token:
            return
