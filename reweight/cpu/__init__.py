"""A CPU backend for verl 0.9.1: verl's own trainer, unmodified, on a machine without an accelerator.

Activation
----------
``reweight.plugin`` (loaded by verl's ``verl.plugins`` entry point at the end of ``import verl``, in
the driver and in every Ray worker) calls :func:`install`. That registers verl platform ``cpu`` and
arms the patches of :mod:`reweight.cpu.patches`. verl then selects the ``cpu`` platform

- explicitly, with ``VERL_PLATFORM=cpu``, or
- automatically, when no accelerator is detected: ``cpu`` is registered after cuda / npu / rocm, so
  it is reached only when none of them answers (verl would otherwise fall back to ``nvidia`` and fail).

On a GPU machine the platform stays ``nvidia`` and nothing changes: the patches only act on the CPU
platform (the process-group backend) or add registry entries that only CPU configs select (FSDP2
engines for device ``cpu``, rollout ``hf``). Set ``REWEIGHT_CPU_BACKEND=0`` to not install anything.

What a CPU run needs from the config (``configs/embedded.yaml`` has it all;
:func:`reweight.cpu.resources.apply_cpu_defaults` fills the machine-dependent parts in the driver):
``trainer.device=cpu``, ``actor_rollout_ref.actor.strategy=fsdp2`` (FSDP1 cannot run on CPU),
``actor_rollout_ref.rollout.name=hf``, sdpa attention, fp32 mixed precision, few reward / agent-loop
workers, one TransferQueue storage unit and enough *logical* Ray CPUs and GPUs for every actor.

Run
---
    reweight-train                                   # the embedded default, on CPU or GPU
    VERL_PLATFORM=cpu reweight-train --config-name dapo_reweight actor_rollout_ref.rollout.name=hf ...
    python -m verl.trainer.main_ppo ... (with the overrides above and num_cpus/num_gpus for Ray)
"""

from __future__ import annotations

import logging
import os

from reweight.cpu.patches import PATCHES, VERL_VERSION, PatchError, VerlVersionError, check, install as _install, status

logger = logging.getLogger("reweight.cpu")

ENV_DISABLE = "REWEIGHT_CPU_BACKEND"

__all__ = [
    "PATCHES",
    "VERL_VERSION",
    "PatchError",
    "VerlVersionError",
    "check",
    "install",
    "is_cpu_platform",
    "status",
]


def enabled() -> bool:
    return os.environ.get(ENV_DISABLE, "1").strip().lower() not in ("0", "false", "no", "off")


def install() -> bool:
    """Install the backend in this process (idempotent). Returns False if disabled by env."""
    if not enabled():
        return False
    _install()
    return True


def is_cpu_platform() -> bool:
    """Whether verl's platform in this process is ``cpu`` (resolves verl's platform if not yet)."""
    from reweight.cpu.platform import cpu_platform_selected

    return cpu_platform_selected()
