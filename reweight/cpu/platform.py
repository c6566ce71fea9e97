"""verl's ``cpu`` platform: device ``cpu``, collectives over gloo, Ray resource ``GPU`` (logical).

verl 0.9.1's platform registry knows cuda / npu / rocm and falls back to ``nvidia`` when none is
found. :class:`PlatformCPU` is registered under the name ``cpu``, *after* the built-in platforms, so
auto-detection reaches it only when no accelerator answers; ``VERL_PLATFORM=cpu`` selects it
explicitly. verl places its training workers in placement groups that ask for one ``GPU`` bundle
per rank: on CPU those are *logical* GPUs declared to Ray (``ray_kwargs.ray_init.num_gpus``; see
:mod:`reweight.cpu.resources`).

verl calls about twenty ``torch.cuda``-style functions through ``get_torch_device()`` (memory
statistics, streams, RNG state, ``get_device_name`` in the FLOPs counter, ...). ``torch.cpu`` has
only some of them, so the platform's device module is :data:`cpu_device_module`, a module that
forwards to ``torch.cpu`` and answers the rest (memory figures from the process, no-op caches).
"""

from __future__ import annotations

import types
from contextlib import contextmanager
from typing import Any, Optional

import torch

PLATFORM_NAME = "cpu"
DEVICE_NAME = "cpu"
BACKEND = "gloo"


def _rss_bytes() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # pragma: no cover - psutil is a verl dependency
        return 0


class _CPUDeviceModule(types.ModuleType):
    """``torch.cpu`` plus the ``torch.cuda`` functions verl calls on its device module.

    Memory "allocated/reserved" figures report this process's resident set size (the closest CPU
    analogue); cache and allocator controls are no-ops; RNG state is torch's CPU generator.
    """

    def __init__(self) -> None:
        super().__init__("reweight.cpu.device_module", "torch.cpu with the CUDA-style API verl expects")
        self._peak = 0

    def __getattr__(self, name: str) -> Any:  # anything else torch.cpu has (Stream, Event, stream, ...)
        return getattr(torch.cpu, name)

    # identity / availability
    def is_available(self) -> bool:
        return True

    def device_count(self) -> int:
        return 1

    def current_device(self) -> str:
        return DEVICE_NAME

    def set_device(self, device: Any) -> None:
        return None

    def get_device_name(self, device: Any = None) -> str:
        return "CPU"

    def get_device_capability(self, device: Any = None) -> tuple[None, None]:
        return (None, None)

    def synchronize(self, device: Any = None) -> None:
        return None

    # memory
    def memory_allocated(self, device: Any = None) -> int:
        rss = _rss_bytes()
        self._peak = max(self._peak, rss)
        return rss

    memory_reserved = memory_allocated

    def max_memory_allocated(self, device: Any = None) -> int:
        return max(self._peak, self.memory_allocated())

    max_memory_reserved = max_memory_allocated

    def reset_peak_memory_stats(self, device: Any = None) -> None:
        self._peak = 0

    def reset_accumulated_memory_stats(self, device: Any = None) -> None:
        return None

    def mem_get_info(self, device: Any = None) -> tuple[int, int]:
        try:
            import psutil

            vm = psutil.virtual_memory()
            return int(vm.available), int(vm.total)
        except Exception:  # pragma: no cover
            return 0, 0

    def empty_cache(self) -> None:
        return None

    def ipc_collect(self) -> None:
        return None

    def set_per_process_memory_fraction(self, fraction: float, device: Any = None) -> None:
        return None

    # RNG
    def get_rng_state(self, device: Any = None) -> torch.Tensor:
        return torch.get_rng_state()

    def set_rng_state(self, state: torch.Tensor, device: Any = None) -> None:
        torch.set_rng_state(state)

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    manual_seed_all = manual_seed


cpu_device_module = _CPUDeviceModule()


def _platform_base():
    from verl.plugin.platform import PlatformBase

    return PlatformBase


def make_platform_class():
    """Build :class:`PlatformCPU` (a ``verl.plugin.platform.PlatformBase`` subclass)."""
    PlatformBase = _platform_base()

    class PlatformCPU(PlatformBase):
        """CPU-only verl platform: torch CPU tensors, gloo collectives, logical Ray GPUs."""

        @property
        def device_name(self) -> str:
            return DEVICE_NAME

        @property
        def vendor_name(self) -> str:
            return "cpu"

        @property
        def device_module(self) -> types.ModuleType:
            return cpu_device_module

        def is_available(self) -> bool:
            return True

        def is_platform_available(self, use_smi_check: bool = False) -> bool:
            # Registered after cuda/npu/rocm, so auto-detection only gets here without an accelerator.
            return True

        def current_device(self) -> str:  # type: ignore[override]
            # verl passes this to Tensor.to(...) and torch.device(...): "cpu" is what works there.
            return DEVICE_NAME

        def device_count(self) -> int:
            return 1

        def set_device(self, device_index: int) -> None:
            return None

        def synchronize(self, device_index: Optional[int] = None) -> None:
            return None

        def manual_seed(self, seed: int) -> None:
            torch.manual_seed(seed)

        def manual_seed_all(self, seed: int) -> None:
            torch.manual_seed(seed)

        def set_allocator_settings(self, settings: str) -> None:
            return None

        def empty_cache(self) -> None:
            return None

        def get_device_capability(self, device_index: int = 0) -> tuple[Optional[int], Optional[int]]:
            return None, None

        def communication_backend_name(self) -> str:
            return BACKEND

        def visible_devices_envvar(self) -> str:
            # Ray sets CUDA_VISIBLE_DEVICES for actors holding (logical) GPUs; harmless on CPU.
            return "CUDA_VISIBLE_DEVICES"

        @contextmanager
        def nvtx_range(self, msg: str):
            yield

        def profiler_start(self) -> None:
            return None

        def profiler_stop(self) -> None:
            return None

        def ray_resource_name(self) -> str:
            return "GPU"

        def ray_resource_options(self, num_gpus: float) -> dict[str, Any]:
            return {"num_gpus": num_gpus}

        def ray_noset_envvars(self) -> list[str]:
            return []

        def is_ipc_supported(self) -> bool:
            return False

        def cudart(self) -> Any:
            return None

    PlatformCPU.__module__ = __name__
    PlatformCPU.__qualname__ = "PlatformCPU"
    return PlatformCPU


def cpu_platform_selected() -> bool:
    """True when verl's platform in this process is ours (explicitly or by auto-detection)."""
    from verl.plugin.platform import get_platform

    return get_platform().device_name == DEVICE_NAME
