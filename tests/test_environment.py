"""The install routes (pyproject ranges, constraints pins, environment.yml, the oldest pins) agree."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (make test-oldest): these checks read files only, so skip them without tomli
    tomllib = pytest.importorskip("tomli")
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip().lstrip("- ").strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[_norm(name)] = version.strip()
    return pins


def _pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return [Requirement(r) for r in reqs]


def test_constraints_pin_every_declared_dependency_within_its_range():
    pins = _pins((ROOT / "constraints.txt").read_text().splitlines())
    for req in _pyproject_requirements():
        name = _norm(req.name)
        assert name in pins, f"{req.name} is declared in pyproject.toml but not pinned in constraints.txt"
        assert Version(pins[name]) in req.specifier, f"{req.name}=={pins[name]} is outside pyproject's {req.specifier}"


def test_environment_yml_lists_the_same_pins_as_constraints():
    constraints = _pins((ROOT / "constraints.txt").read_text().splitlines())
    env_lines = (ROOT / "environment.yml").read_text().splitlines()
    environment = _pins([line for line in env_lines if "==" in line and "python=" not in line])
    assert environment == constraints


def test_pyproject_uses_ranges_so_colab_keeps_its_torch():
    for req in _pyproject_requirements():
        assert not any(s.operator == "==" for s in req.specifier), f"{req} pins; use a range in pyproject.toml"


def test_oldest_constraints_pin_exactly_the_lower_bounds():
    """constraints-oldest.txt is what `make test-oldest` installs: each runtime dependency at the lower
    bound pyproject.toml declares, so a passing run there is evidence for that bound."""
    oldest = _pins((ROOT / "constraints-oldest.txt").read_text().splitlines())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {_norm(Requirement(r).name) for r in project["dependencies"]}
    for req in _pyproject_requirements():
        name = _norm(req.name)
        if name not in oldest:
            assert name not in runtime, f"{req.name} is a dependency but not pinned in constraints-oldest.txt"
            continue
        lower = [s.version for s in req.specifier if s.operator == ">="]
        assert lower, f"{req.name} has no lower bound in pyproject.toml"
        assert Version(oldest[name]) == Version(lower[0]), (
            f"{req.name}: constraints-oldest.txt pins {oldest[name]}, pyproject.toml's lower bound is {lower[0]}")
