"""The installed versions of the pinned dependencies lie in pyproject.toml's ranges: `make setup` installs
from those pins, so a CI run tests exactly them; a version outside them fails here, not deep in a sweep."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
PINNED = [Requirement(r) for extra in PYPROJECT["project"]["optional-dependencies"].values() for r in extra
          if not r.startswith("gatesweep") and re.search(r"[<>=]", r)]


def test_the_launchers_private_apis_are_pinned():
    names = {r.name: str(r.specifier) for r in PINNED}
    for name in ("submitit", "ray", "mlflow", "pydantic"):
        assert "<" in names[name], f"{name} needs an upper bound: the code uses its private or fast-moving API"


@pytest.mark.parametrize("req", PINNED, ids=[r.name for r in PINNED])
def test_installed_version_is_in_the_tested_range(req: Requirement):
    assert req.specifier.contains(version(req.name), prereleases=True), (req.name, version(req.name), str(req))
