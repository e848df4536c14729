"""Links into the MLflow UI that land where gatesweep's runs are (pure: no I/O).

MLflow 3.17 opens an experiment on its GenAI overview (traces, an assistant pane): which view an
experiment opens on follows the UI's GenAI / Model training switch, a browser setting that defaults to
GenAI (the experiment kind tag, `mlflow.experimentKind`, which gatesweep sets on every experiment it
creates - trainer.mlflow_sync - decides only where that switch is off). The URL's `workflowType` wins
over the browser setting, and the runs view reads its search, sort and filter from the URL too. So every
link gatesweep prints opens the Model training view: the trials (filtered to this spec, children listed
flat instead of collapsed under their sweep run, best final loss first) and the decision table on the
sweep run.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

from sweeps.mlflow_runs import is_server

UI_DEFAULT = "http://127.0.0.1:5000"  # what `make mlflow-ui` serves for the sqlite store
TRAINING = {"workflowType": "machine_learning"}  # MLflow's "Model training" side of the switch


def ui_base(tracking_uri: str) -> tuple[str, str]:
    """(UI address, how to get it up): the server itself, or `make mlflow-ui` for a sqlite store."""
    if is_server(tracking_uri):
        return tracking_uri.rstrip("/"), ""
    return UI_DEFAULT, " (start it with: make mlflow-ui)"


def _query(params: dict[str, str]) -> str:
    return urlencode(TRAINING | params, quote_via=quote, safe="")


def runs_url(base: str, experiment_id: str, spec: str | None = None) -> str:
    """The experiment's trial runs (those of `spec`), flat, best final val loss first."""
    where = "tags.`gatesweep.kind` = 'trial'" + (f" and tags.spec = '{spec}'" if spec else "")
    query = _query({"searchFilter": where, "orderByKey": "metrics.`final_val_loss`", "orderByAsc": "true"})
    return f"{base}/#/experiments/{experiment_id}/runs?{query}"


def artifact_url(base: str, experiment_id: str, run_id: str, path: str) -> str:
    """A run's artifact (e.g. the sweep run's decision table) in the Model training view."""
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/{path}?{_query({})}"


def experiments_url(base: str) -> str:
    """The experiment list, in the Model training view."""
    return f"{base}/#/experiments?{_query({})}"
