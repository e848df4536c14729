"""The package structure issue #14 asks for, checked from the source: layers (gatesweep -> cluster /
analysis -> sweeps -> trainer, the trainer imports no launcher), no import circle (module-level or lazy,
inside functions), one launcher sub-package per backend, and the concepts that have one home."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("trainer", "sweeps", "cluster", "analysis", "gatesweep")
LAYER = {"trainer": 0, "sweeps": 1, "cluster": 2, "analysis": 2, "gatesweep": 3}


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """Project modules this file imports anywhere (top level or inside a function)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        out |= {n for n in names if n in MODULES}
    return out


GRAPH = {m: _imports(p) - {m} for m, p in MODULES.items()}


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_anywhere():
    # a package's __init__ importing a sibling that imports the package back is still a circle
    assert _cycles() == []


def test_layers_point_down_and_the_trainer_imports_no_launcher():
    up = [(m, d) for m, deps in GRAPH.items() for d in deps
          if LAYER[d.split(".")[0]] > LAYER[m.split(".")[0]]]
    assert up == []


def test_each_backend_is_a_sub_package_with_a_launcher_and_a_docstring():
    from cluster.backend import BACKENDS, launcher

    for name in BACKENDS:
        init = REPO / "cluster" / name / "__init__.py"
        assert ast.get_docstring(ast.parse(init.read_text())), name
        assert launcher(name).name == name
    assert not list((REPO / "cluster").glob("slurm_*.py")) and not list((REPO / "cluster").glob("ray_*.py"))
    for sub in ("common", "local", "slurm", "ray"):
        for path in (REPO / "cluster" / sub).glob("*.py"):
            assert ast.get_docstring(ast.parse(path.read_text())), path


BACKEND_PACKAGES = ("local", "slurm", "ray")


def test_backends_do_not_know_each_other():
    """A backend imports no other backend and cluster.common imports none (#23 item 6): what two of them
    need (the trainer command, the search space, the sbatch options) lives in cluster.common; the one
    question every launcher asks of the others' schedulers (is a trial's job alive?) goes through the
    registry (cluster.backend.jobs_alive), which imports backends by name only."""
    from cluster.backend import BACKENDS

    assert set(BACKEND_PACKAGES) == set(BACKENDS)

    def package(module: str) -> str | None:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 and parts[0] == "cluster" and parts[1] in (*BACKENDS, "common") else None

    crossing = sorted((m, d) for m, deps in GRAPH.items() for d in deps
                      if package(m) and package(d) in BACKENDS and package(d) != package(m))
    assert crossing == []
    assert "cluster.local.runner" not in GRAPH["cluster.ray.child"]
    assert "cluster.common.command" in GRAPH["cluster.ray.child"]


@pytest.mark.parametrize(("pattern", "home"), [
    (r"sqlite:///mlflow\.db", "sweeps/mlflow_runs.py"),
    (r"PR_SET_PDEATHSIG", "cluster/common/process.py"),
    (r"\.search_runs\(", "sweeps/mlflow_runs.py"),
    (r"^DONE = ", "trainer/record.py"),
    (r"get_close_matches\(|did you mean \{' or '", "trainer/config.py"),
    (r"config_hash\(cfg\)", "sweeps/expand.py"),
    (r"""['"]  ['"]\.join\(.*ljust\(""", "sweeps/text_table.py"),
    (r"""\(['"]=['"], ['"]\+['"], ['"]-['"], ['"]@['"]""", "trainer/csvsafe.py"),  # OWASP's CSV-injection rule
])
def test_a_concept_is_written_once(pattern: str, home: str):
    """Code (not docs) that spells the concept lives in its one home (mlflow_sync's own find_run aside)."""
    found = sorted(str(p.relative_to(REPO)) for p in MODULES.values()
                   if re.search(pattern, _code(p), re.MULTILINE))
    allowed = {home, "trainer/mlflow_sync.py"} if "search_runs" in pattern else {home}
    assert set(found) <= allowed and home in found, found


def _code(path: Path) -> str:
    """The file without docstrings and comments."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            body[0] = ast.Pass()
    return ast.unparse(tree)
