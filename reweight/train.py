"""``reweight-train``: verl's DAPO trainer with our configs, checks and loss.

    reweight-train                                   # the embedded default (configs/embedded.yaml)
    reweight-train --config-name qwen25_math_7b_reweight trainer.nnodes=4
    reweight-train --config-name dapo_reweight actor_rollout_ref.actor.policy_loss.alpha=0.1 ...
    reweight-train --dry-run ...                     # compose + check + validate, print, exit

The override syntax is Hydra's, exactly as for ``python -m verl.trainer.main_ppo``. The flow: compose
(``pkg://reweight.configs`` on top of verl's ``pkg://verl.trainer.config``) -> our checks
(:mod:`reweight.checks`) -> driver-side preparation -> verl's ``validate_config`` -> verl's
``run_ppo`` (Ray, the V1 trainer). Everything before ``run_ppo`` runs without Ray or a GPU.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf

CONFIG_MODULE = "reweight.configs"
CONFIG_PATH = "pkg://" + CONFIG_MODULE
DEFAULT_CONFIG = "embedded"
DRY_RUN_FLAG = "--dry-run"


def compose_config(config_name: str = DEFAULT_CONFIG, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose a training config as ``reweight-train`` would, without running anything (tests, launchers)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
        return compose(config_name=config_name, overrides=list(overrides))


PLUGIN_MODULE = "reweight.plugin"


def require_plugin_in_workers(cfg: DictConfig) -> None:
    """Make every Ray worker import our plugin loudly.

    verl imports ``verl.plugins`` entry points but swallows their errors at DEBUG level; modules named in
    ``VERL_USE_EXTERNAL_MODULES`` it imports without a guard. Passing that variable through the job's
    runtime_env makes a worker on a node without verl-reweight fail at ``import verl`` with
    "No module named 'reweight'" (install verl-reweight there), and a broken install fail with its real
    traceback, instead of a late "Unsupported loss mode" or a silently different loss.
    """
    from omegaconf import open_dict

    env_vars = OmegaConf.select(cfg, "ray_kwargs.ray_init.runtime_env.env_vars", default=None)
    modules = [m for m in str((env_vars or {}).get("VERL_USE_EXTERNAL_MODULES", "") or "").split(",") if m]
    if PLUGIN_MODULE not in modules:
        modules.append(PLUGIN_MODULE)
    with open_dict(cfg):
        cfg.ray_kwargs.ray_init.runtime_env.setdefault("env_vars", {})
        cfg.ray_kwargs.ray_init.runtime_env.env_vars["VERL_USE_EXTERNAL_MODULES"] = ",".join(modules)


def targets_cpu(cfg: DictConfig) -> bool:
    """Whether the config is meant for verl's CPU platform (explicitly, or by its CPU-only HF rollout)."""
    import os

    return (
        os.environ.get("VERL_PLATFORM", "").lower() == "cpu"
        or OmegaConf.select(cfg, "trainer.device") == "cpu"
        or OmegaConf.select(cfg, "actor_rollout_ref.rollout.name") == "hf"
    )


def prepare(cfg: DictConfig, dry_run: bool = False) -> None:
    """Check the config and prepare the driver; raises before Ray starts on bad input.

    A dry run validates a config for the platform it targets: a GPU config checked on a laptop is not
    held to the CPU backend's rules, which apply when the run itself would use the CPU platform.
    """
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    from reweight.checks import check_config

    check_config(cfg)
    if not cfg.trainer.use_v1:
        raise ValueError("trainer.use_v1=False selects verl's deprecated V0 trainer, which verl-reweight does not support")
    if not dry_run:  # W&B without an account would fail only after Ray, the models and the first step
        import os

        from reweight.launch.wandb_env import check_wandb_credentials

        note = check_wandb_credentials(cfg.trainer.get("logger"), os.environ)
        if note:
            print(f"[reweight-train] {note}")
    require_plugin_in_workers(cfg)
    # HOOK: driver-side preparation that must happen before verl validates the config and Ray starts
    # (e.g. building the embedded default's data and model, CPU-backend checks) goes here.
    from reweight.cpu.resources import prepare_driver as prepare_cpu_backend
    from reweight.embedded import prepare as prepare_embedded

    prepare_embedded(cfg)  # builds/caches the embedded:// model and data on first use
    if not dry_run or targets_cpu(cfg):
        prepare_cpu_backend(cfg)  # CPU platform only: refuses what cannot run, sizes Ray / TransferQueue
    auto_set_device(cfg)
    validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))


def run(cfg: DictConfig, dry_run: bool = False) -> None:
    """Prepare, then train with verl's ``run_ppo`` (or print the resolved config if ``dry_run``)."""
    prepare(cfg, dry_run=dry_run)
    if dry_run:
        print(OmegaConf.to_yaml(cfg, resolve=True))
        print(f"[reweight-train] dry run: config checked and validated; not starting Ray ({DRY_RUN_FLAG}).")
        return
    from verl.trainer.main_ppo import TaskRunnerV1, run_ppo

    run_ppo(cfg, task_runner_class=TaskRunnerV1)
    hint = evaluation_command(cfg)
    if hint:
        print(f"[reweight-train] evaluate the latest checkpoint with:\n  {hint}")


def evaluation_command(cfg: DictConfig) -> str | None:
    """The ``reweight-eval sample`` command for the run's latest checkpoint on its validation data (None without one),
    generating up to the training response length (``data.max_response_length``).

    ``--model`` is the experiment directory (``trainer.default_local_dir``): the evaluation tools read verl
    checkpoints directly (:mod:`reweight.models` exports the latest step to an HF model once).
    """
    import shlex
    from pathlib import Path

    ckpt = OmegaConf.select(cfg, "trainer.default_local_dir")
    val = OmegaConf.select(cfg, "data.val_files")
    data = val if isinstance(val, str) or val is None else (list(val) or [None])[0]
    if not ckpt or not data or not (Path(ckpt) / "latest_checkpointed_iteration.txt").is_file():
        return None
    ckpt = str(Path(ckpt).resolve())
    out = str(Path(ckpt) / "eval" / "val.jsonl")
    command = f"reweight-eval sample --model {shlex.quote(ckpt)} --data {shlex.quote(str(data))} --out {shlex.quote(out)}"
    length = OmegaConf.select(cfg, "data.max_response_length")
    return command + (f" --max-new-tokens {int(length)}" if length else "")


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: a Hydra app over our configs; ``--dry-run`` is ours, the rest is Hydra's."""
    import hydra

    args = list(sys.argv[1:] if argv is None else argv)
    dry_run = DRY_RUN_FLAG in args
    args = [a for a in args if a != DRY_RUN_FLAG]

    @hydra.main(config_path=CONFIG_PATH, config_name=DEFAULT_CONFIG, version_base=None)
    def _app(cfg: DictConfig) -> None:
        run(cfg, dry_run=dry_run)

    saved = sys.argv
    sys.argv = [saved[0] if saved else "reweight-train", *args]
    try:
        _app()
    finally:
        sys.argv = saved


if __name__ == "__main__":
    main()
