"""launch/constraints/cpu.txt (the install lock) agrees with pyproject.toml.

Every requirement of the CPU install (``dependencies`` + the ``test`` extra + the README's torch pin), and
every extra requirement those pull in (``verl[verl-core]``, ``ray[default]``), is pinned in the lock, for
each Python the lock covers, at a version its specifier accepts; the lock pins nothing twice for one Python.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "launch" / "constraints" / "cpu.txt"
README_TORCH = "torch==2.13.0"

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def _pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [*project["dependencies"], *project["optional-dependencies"]["test"], README_TORCH]
    return [Requirement(r) for r in reqs]


def _covered_pythons(text: str) -> list[str]:
    match = re.search(r"^# Covers Python ([0-9., ]+) on", text, re.M)
    assert match, "the lock's header must say which Python versions it covers"
    return [v.strip() for v in match.group(1).split(",") if v.strip()]


def _pins(text: str, python: str) -> dict[str, Version]:
    """{canonical name: pinned version} of the lines that apply on ``python``."""
    pins: dict[str, Version] = {}
    env = {"python_version": python, "python_full_version": python + ".0"}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        assert not req.extras, f"constraints cannot carry extras: {line}"
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"not an exact pin: {line}"
        name = canonicalize_name(req.name)
        assert name not in pins, f"{name} pinned twice for Python {python}"
        pins[name] = Version(specs[0].version)
    return pins


def test_every_dependency_is_pinned_at_a_version_its_specifier_accepts():
    text = LOCK.read_text()
    pythons = _covered_pythons(text)
    assert "3.11" in pythons
    for python in pythons:
        pins = _pins(text, python)
        assert len(pins) > 50, "a full resolution pins the whole tree, not just our direct dependencies"
        for req in _pyproject_requirements():
            name = canonicalize_name(req.name)
            assert name in pins, f"{req} (pyproject.toml) is not pinned in {LOCK.name} for Python {python}"
            assert req.specifier.contains(pins[name], prereleases=True), (
                f"{LOCK.name} pins {name}=={pins[name]} for Python {python}, outside pyproject.toml's {req}"
            )
        # the extras we ask for resolve into the lock too (checked against the installed metadata)
        from importlib.metadata import PackageNotFoundError, requires

        for parent, extra in (("verl", "verl-core"), ("ray", "default")):
            try:
                declared = requires(parent) or []
            except PackageNotFoundError:  # pragma: no cover
                pytest.skip(f"{parent} not installed")
            for line in declared:
                dep = Requirement(line)
                env = {"python_version": python, "extra": extra, "sys_platform": "linux", "platform_system": "Linux",
                       "platform_machine": "x86_64"}
                if dep.marker is None or "extra" not in str(dep.marker) or not dep.marker.evaluate(env):
                    continue
                name = canonicalize_name(dep.name)
                assert name in pins, f"{parent}[{extra}] needs {dep}, not pinned in {LOCK.name}"
                assert dep.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} vs {parent}[{extra}]'s {dep}"


def test_every_pin_is_limited_to_the_pythons_the_header_names():
    """On another Python pip must ignore the lock (not fail on a wheel that does not exist there)."""
    text = LOCK.read_text()
    pythons = _covered_pythons(text)
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        marker = Requirement(line).marker
        assert marker is not None, f"unmarked pin: {line}"
        for other in ("3.9", "3.10", "3.11", "3.12", "3.13"):
            assert marker.evaluate({"python_version": other}) == (other in pythons), (line, other)


def test_readme_and_ci_install_with_the_lock():
    command = 'pip install -c launch/constraints/cpu.txt "torch==2.13.0" -e ".[test]"'
    assert command in (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "-c launch/constraints/cpu.txt" in ci and '"torch==2.13.0"' in ci


def test_the_lock_script_reads_the_same_requirements():
    """launch/lock.py resolves exactly pyproject's dependencies + test extra + the torch pin."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("lock", ROOT / "launch" / "lock.py")
    lock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lock)
    assert [str(Requirement(r)) for r in lock.project_requirements()] == [str(r) for r in _pyproject_requirements()]
    assert Marker('python_version == "3.11"').evaluate({"python_version": "3.11"})
    assert SpecifierSet("==2.13.0").contains("2.13.0+cpu")  # why the lock drops local labels
