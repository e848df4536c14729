"""`reports/<stage>/`: a stage report's tables, figures and README, writing only what changed.

A manifest beside them (`.gatesweep-report.json`) records, per file, a hash of what it was made from
and a hash of its bytes. A figure whose inputs hash as recorded, and whose file is still the one
written, is not drawn again (drawing is most of a report's time); a text file is written only when
its bytes differ. The manifest also holds the key of the whole report (analysis.cache.key): when a
repeated call's key matches and every file is intact, nothing is read, computed or written.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from analysis.cache import code_identity, write_atomic

MANIFEST = ".gatesweep-report.json"


class Folder:
    """The report folder and its manifest."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        try:
            old = json.loads((out_dir / MANIFEST).read_text())
        except (OSError, ValueError):
            old = {}
        self._old: dict[str, Any] = old if isinstance(old, dict) and isinstance(old.get("files"), dict) else {}
        self._files: dict[str, dict[str, Any]] = {}

    def intact(self, key: str | None) -> list[Path] | None:
        """The report's files when the manifest was written under `key` and every file is as written."""
        if key is None or self._old.get("key") != key:
            return None
        for name, entry in self._old["files"].items():
            if entry.get("sha256") is not None and _sha(self.out_dir / name) != entry["sha256"]:
                return None
        return [self.out_dir / n for n in self._old.get("order", [])]

    def text(self, name: str, text: str) -> None:
        path, data = self.out_dir / name, text.encode()
        digest = _sha_bytes(data)
        if _sha(path) != digest:
            path.write_bytes(data)
        self._files[name] = {"sha256": digest}

    def figure(self, name: str, draw: Callable[[Path], Any], inputs: tuple) -> bool:
        """Draw `name` with `draw(path)` unless its inputs and its file are as recorded. Returns whether
        `draw` gave something (plots.plot_val_vs_time draws nothing when no run has both curves)."""
        path, digest = self.out_dir / name, _digest(name, inputs)
        old: dict[str, Any] = self._old.get("files", {}).get(name) or {}
        kept = old.get("inputs") == digest and (old.get("sha256") is None or _sha(path) == old["sha256"])
        gave = bool(old.get("gave")) if kept else bool(draw(path))
        self._files[name] = {"inputs": digest, "gave": gave, "sha256": _sha(path) if path.exists() and gave else None}
        return gave

    def save(self, key: str | None, order: list[str]) -> list[Path]:
        """Write the manifest; returns the report's files in `order`."""
        manifest = {"key": key, "order": order, "files": self._files}
        write_atomic(self.out_dir / MANIFEST, json.dumps(manifest, indent=1).encode())
        return [self.out_dir / n for n in order]


def _digest(name: str, inputs: tuple) -> str:
    """Equal inputs give equal digests, unequal ones never do (a pickle reads back what it holds); at
    worst a figure is drawn again needlessly."""
    return hashlib.sha256(code_identity().encode() + name.encode() + pickle.dumps(inputs, protocol=5)).hexdigest()


def _sha(path: Path) -> str | None:
    try:
        return _sha_bytes(path.read_bytes())
    except OSError:
        return None


def _sha_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def slug(text: str) -> str:
    """A name for files and folders: runs of other characters than letters, digits and . + - become _."""
    return re.sub(r"[^\w.+-]+", "_", text).strip("_") or "report"


def per_layer_metrics(columns) -> list[str]:
    """The `diag/<name>` metrics logged per layer (`diag/<name>/layer_NN` columns)."""
    found = {m.group(1) for c in columns if (m := re.match(r"^(diag/.+)/layer_\d+$", str(c)))}
    return sorted(found)


def write_report(folder: Folder, runs, hist, numeric, compat, *, title: str, source: str, adjust: str,
                 key: str | None) -> list[Path]:
    """Tables, figures and README of a stage into `folder`; returns the report's files, README first."""
    from analysis import plots, render
    from analysis.report import render_report

    folder.out_dir.mkdir(parents=True, exist_ok=True)
    files = {"table.md": render.to_markdown(render.display_table(numeric), render.DISPLAY_HEADERS),
             "table.csv": render.to_csv(numeric), "compat.csv": render.to_csv(compat)}
    for name, text in files.items():
        folder.text(name, text)
    figures: list[tuple[str, str]] = []
    rows, left_out = plots.pick_configs(numeric)  # a figure of thousands of lines is unreadable and slow
    shown, drawn, keys = numeric.loc[rows], plots.runs_of(runs, numeric, rows), plots.table_keys(numeric)
    curves = hist[hist["mlflow_run_id"].isin(drawn["mlflow_run_id"])]  # all the curve figures read of hist
    some = (f" - the {plots.MAX_CONFIGS} best configurations by final loss and their baselines; "
            f"{left_out:,} more in table.csv") if left_out else ""
    if "val_loss" in set(hist["key"]):
        folder.figure("val_loss.png", lambda p: plots.plot_val_curves(curves, drawn, p, keys=keys) or True,
                      (curves, drawn, keys))
        figures.append((f"Validation loss (mean over seeds, min-max band){some}", "val_loss.png"))
    if folder.figure("val_loss_time.png", lambda p: plots.plot_val_vs_time(curves, drawn, p, keys=keys),
                     (curves, drawn, keys)):
        figures.append((f"Validation loss vs wall-clock train time (mean over seeds){some}", "val_loss_time.png"))
    bars, lrs = (t[plots.bar_columns(t)] for t in (shown, numeric))  # what they draw: not p, not n
    folder.figure("final_loss.png", lambda p: plots.plot_stage_bars(bars, p) or True, (bars,))
    figures.append((f"Final validation loss (95% CI){some}", "final_loss.png"))
    if plots.is_lr_stage(numeric):
        folder.figure("lr_sweep.png", lambda p: plots.plot_lr_sweep(lrs, p) or True, (lrs,))
        figures.append(("Final validation loss vs learning rate (95% CI)", "lr_sweep.png"))
    for metric in per_layer_metrics(runs.columns):
        name = f"{slug(metric)}.png"
        folder.figure(name, lambda p, m=metric: plots.plot_per_layer(drawn, m, p) or True, (drawn, metric))
        figures.append((f"{metric} per layer{some}", name))
    readme = render_report(title, source=source, table_md=files["table.md"], compat_md=render.to_markdown(compat),
                           figures=figures, files=list(files), footer=render.footer(numeric),
                           reading_note=render.reading_note(numeric, adjust))
    folder.text("README.md", readme)
    return folder.save(key, ["README.md", *files, *(f for _, f in figures)])
