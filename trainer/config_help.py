"""`gatesweep train --help-config`: every trainer key with its type, default and docstring, read from
the config dataclasses themselves (trainer/config.py), so the list cannot drift from the code."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from typing import Any

from trainer import config


def field_docs() -> dict[str, str]:
    """key -> the string literal that follows its field in trainer/config.py (attribute docstrings)."""
    tree = ast.parse(inspect.getsource(config))
    docs: dict[str, str] = {}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        body = cls.body
        for stmt, nxt in zip(body, body[1:] + [None]):
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(nxt, ast.Expr) \
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def keys_table() -> list[dict[str, Any]]:
    """One entry per trainer key, in section order: key, section, type, default, choices, doc."""
    docs, base = field_docs(), config.TrainConfig()
    out = []
    for section in config.SECTIONS:
        for f in dataclasses.fields(getattr(base, section)):
            out.append({"key": f.name, "section": section, "type": config._TYPES[section][f.name].__name__,
                        "default": getattr(getattr(base, section), f.name),
                        "choices": list(config.CHOICES.get(f.name, ())), "doc": docs.get(f.name, ""),
                        "identity": f.name not in config.NON_IDENTITY_KEYS})
    return out


def help_text(width: int = 100) -> str:
    lines = ["Trainer keys (key=value on the command line, flat or section.key in a YAML file or a spec's base/grid).",
             "Precedence: preset < config file < env vars < key=value. `*` = not part of the trial id (same math).",
             f"preset: {' | '.join(config.PRESETS)} (applied first)", ""]
    for section in config.SECTIONS:
        lines.append(f"[{section}]")
        for k in (e for e in keys_table() if e["section"] == section):
            choices = f" ({' | '.join(k['choices'])})" if k["choices"] else ""
            mark = "" if k["identity"] else " *"
            lines.append(f"  {k['key']}: {k['type']} = {k['default']!r}{choices}{mark}")
            if k["doc"]:
                lines += textwrap.wrap(k["doc"], width, initial_indent="      ", subsequent_indent="      ")
        lines.append("")
    return "\n".join(lines)
