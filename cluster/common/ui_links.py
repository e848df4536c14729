"""The lines a sweep ends with that say where its runs and its decision table are in the MLflow UI."""

from __future__ import annotations

from typing import Any

from sweeps.mlflow_ui import artifact_url, runs_url, ui_base


def ui_lines(store: Any, spec: str, parent_id: str | None = None) -> list[str]:
    """['MLflow UI: ...', 'decision table: ...'], or [] where there is no store or experiment to show."""
    if not store.enabled or not store.exists():
        return []
    try:
        experiment_id = store._existing_experiment_id()  # noqa: SLF001 - a query: never creates it
    except Exception:  # noqa: BLE001 - a link is a courtesy; an unreachable store has said so already
        return []
    if experiment_id is None:
        return []
    base, how = ui_base(store.uri)
    lines = [f"MLflow UI{how}: the trials, best first: {runs_url(base, experiment_id, spec)}"]
    try:
        from analysis.decision import TABLE_ARTIFACT  # loaded already: the sweep's end logged the table
    except ImportError:  # a launcher without the analysis extras logs no decision table
        return lines
    if parent_id:
        lines.append(f"the decision table (sweep run {parent_id}): "
                     f"{artifact_url(base, experiment_id, parent_id, TABLE_ARTIFACT)}")
    return lines
