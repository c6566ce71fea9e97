"""launch/constraints/{cpu,gpu}.txt (the install locks) agree with pyproject.toml.

Every requirement of the CPU install (``dependencies`` + the ``test`` extra + the README's torch pin) and of
the GPU install (``dependencies`` + the ``gpu`` and ``test`` extras), and every extra requirement those pull
in (``verl[verl-core]``, ``verl[vllm]``, ``ray[default]``), is pinned in its lock, for each Python the lock
covers, at a version its specifier accepts; a lock pins nothing twice for one Python. Offline: these tests
compare files (and verl's installed metadata), they resolve nothing.
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
GPU_LOCK = ROOT / "launch" / "constraints" / "gpu.txt"
README_TORCH = "torch==2.13.0"
GPU_COMMAND = 'pip install -c launch/constraints/gpu.txt -e ".[gpu,test]"'
# lock file -> (pyproject extras, extra pins, the extras of other packages it must cover)
INSTALLS = {
    LOCK: (("test",), (README_TORCH,), (("verl", "verl-core"), ("ray", "default"))),
    GPU_LOCK: (("gpu", "test"), (), (("verl", "verl-core"), ("verl", "vllm"), ("ray", "default"))),
}

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover  (pytest itself depends on tomli before Python 3.11)
    import tomli as tomllib


def _pyproject_requirements(lock: Path = LOCK) -> list[Requirement]:
    extras, pins, _ = INSTALLS[lock]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [*project["dependencies"], *(r for extra in extras for r in project["optional-dependencies"][extra]), *pins]
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


@pytest.mark.parametrize("lock", list(INSTALLS), ids=lambda p: p.name)
def test_every_dependency_is_pinned_at_a_version_its_specifier_accepts(lock):
    text = lock.read_text()
    LOCK = lock  # noqa: N806 - the messages name the file under test
    pythons = _covered_pythons(text)
    assert "3.11" in pythons
    for python in pythons:
        pins = _pins(text, python)
        assert len(pins) > 50, "a full resolution pins the whole tree, not just our direct dependencies"
        for req in _pyproject_requirements(lock):
            name = canonicalize_name(req.name)
            assert name in pins, f"{req} (pyproject.toml) is not pinned in {LOCK.name} for Python {python}"
            assert req.specifier.contains(pins[name], prereleases=True), (
                f"{LOCK.name} pins {name}=={pins[name]} for Python {python}, outside pyproject.toml's {req}"
            )
        # the extras we ask for resolve into the lock too (checked against the installed metadata)
        from importlib.metadata import PackageNotFoundError, requires

        for parent, extra in INSTALLS[lock][2]:
            try:
                declared = requires(parent) or []
            except PackageNotFoundError:  # pragma: no cover
                pytest.fail(f"{parent} is a dependency of ours and is not installed")
            for line in declared:
                dep = Requirement(line)
                env = {"python_version": python, "extra": extra, "sys_platform": "linux", "platform_system": "Linux",
                       "platform_machine": "x86_64"}
                if dep.marker is None or "extra" not in str(dep.marker) or not dep.marker.evaluate(env):
                    continue
                name = canonicalize_name(dep.name)
                assert name in pins, f"{parent}[{extra}] needs {dep}, not pinned in {LOCK.name}"
                assert dep.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} vs {parent}[{extra}]'s {dep}"


@pytest.mark.parametrize("lock", list(INSTALLS), ids=lambda p: p.name)
def test_every_pin_is_limited_to_the_pythons_the_header_names(lock):
    """On another Python pip must ignore the lock (not fail on a wheel that does not exist there)."""
    text = lock.read_text()
    pythons = _covered_pythons(text)
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        marker = Requirement(line).marker
        assert marker is not None, f"unmarked pin: {line}"
        for other in ("3.9", "3.10", "3.11", "3.12", "3.13"):
            if other not in pythons:
                assert not marker.evaluate({"python_version": other}), (line, other)
        assert any(marker.evaluate({"python_version": p}) for p in pythons), line


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
    assert [str(Requirement(r)) for r in lock.project_requirements(lock="gpu")] == [
        str(r) for r in _pyproject_requirements(GPU_LOCK)]
    assert lock.LOCKS["gpu"].out == GPU_LOCK and lock.LOCKS["gpu"].use == GPU_COMMAND
    assert Marker('python_version == "3.11"').evaluate({"python_version": "3.11"})
    assert SpecifierSet("==2.13.0").contains("2.13.0+cpu")  # why the lock drops local labels


def _verl_vllm_pins() -> dict[str, Version]:
    """The exact pins of verl 0.9.1's ``vllm`` extra (torch, vllm, transformers...), from its installed metadata."""
    from importlib.metadata import requires

    pins = {}
    for line in requires("verl") or []:
        dep = Requirement(line)
        if dep.marker is not None and dep.marker.evaluate({"extra": "vllm"}) and not dep.marker.evaluate({"extra": ""}):
            specs = list(dep.specifier)
            if len(specs) == 1 and specs[0].operator == "==":
                pins[canonicalize_name(dep.name)] = Version(specs[0].version)
    return pins


def test_the_gpu_lock_is_verl_0_9_1s_vllm_stack_on_python_3_11_and_3_12():
    """Python 3.12 is the Python of verl's images; 3.11 ours. The stack is verl's vLLM extra, exactly."""
    text = GPU_LOCK.read_text()
    assert {"3.11", "3.12"} <= set(_covered_pythons(text))
    want = _verl_vllm_pins()
    assert {"torch", "vllm", "transformers"} <= set(want)
    for python in ("3.11", "3.12"):
        pins = _pins(text, python)
        for name, version in want.items():
            assert pins[name] == version, f"{GPU_LOCK.name} pins {name}=={pins[name]}, verl[vllm] {version}"


def test_no_install_requires_flash_attn():
    """PyPI serves flash-attn as source only, whose build fails under pip's build isolation: never a requirement."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    assert not [r for r in reqs if canonicalize_name(Requirement(r).name) == "flash-attn"]
    for lock in INSTALLS:
        assert "flash-attn" not in _pins(lock.read_text(), "3.11"), lock.name


def test_readme_installs_a_gpu_machine_with_the_gpu_lock():
    readme = (ROOT / "README.md").read_text()
    assert GPU_COMMAND in readme
    assert ".[vllm]" not in readme  # the extra that asked for flash-attn is gone
