"""Checks of a composed training config that run in the driver before Ray starts.

verl validates its own fields (``verl.utils.config.validate_config``); these checks catch what verl
lets through silently or only reports from inside a Ray worker, minutes into a job:

- legacy reward keys that verl 0.9.x ignores or rewrites (``reward_model.reward_manager``,
  ``reward_model.overlong_buffer``, ...): refused, with the key to write instead;
- loss_mode ``reweight`` without our config class (verl's ``PolicyLossConfig`` has no
  scheme/alpha/prob_source/apply_to), our config class with another loss_mode, bad
  scheme/alpha/prob_source/apply_to (e.g. scheme normalize with alpha 0), each error naming its key;
- a loss_mode that is not registered in this process (our plugin did not load).
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

POLICY_LOSS = "actor_rollout_ref.actor.policy_loss"

# legacy key (as the user may write it) -> what verl 0.9.1 reads instead
LEGACY_REWARD_KEYS = {
    "reward_model.reward_manager": "reward.reward_manager.name",
    "reward_model.overlong_buffer": "reward.reward_kwargs.overlong_buffer_cfg (and reward.reward_kwargs.max_resp_len)",
    "reward_model.reward_kwargs": "reward.reward_kwargs",
    "reward_model.num_workers": "reward.num_workers",
    "custom_reward_function.path": "reward.custom_reward_function.path",
    "custom_reward_function.name": "reward.custom_reward_function.name",
}


class ConfigError(ValueError):
    """A training config that would fail (or silently misbehave) once Ray is up."""


def _is_set(cfg: DictConfig, dotted: str) -> bool:
    value = OmegaConf.select(cfg, dotted, default=None, throw_on_missing=False)
    return value is not None


def check_legacy_reward_keys(cfg: DictConfig) -> None:
    """Refuse the pre-0.9 reward keys: verl 0.9.x ignores or silently rewrites them."""
    for legacy, replacement in LEGACY_REWARD_KEYS.items():
        if _is_set(cfg, legacy):
            raise ConfigError(
                f"'{legacy}' is a legacy verl key that verl 0.9.1 does not honour as written; "
                f"remove it and set {replacement} instead "
                f"(e.g. reward.reward_manager.name=dapo, "
                f"+reward.reward_kwargs.overlong_buffer_cfg.enable=true)"
            )


def check_policy_loss(cfg: DictConfig) -> Any:
    """Check the policy-loss section and instantiate it as verl's workers will; return the config object."""
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY
    from verl.utils.config import omega_conf_to_dataclass

    from reweight.loss import CONFIG_TARGET, LOSS_MODE

    section = OmegaConf.select(cfg, POLICY_LOSS)
    if section is None:
        raise ConfigError(f"{POLICY_LOSS} is missing from the config")
    loss_mode = section.get("loss_mode", "vanilla")
    target = section.get("_target_", "")
    if loss_mode == LOSS_MODE and target != CONFIG_TARGET:
        raise ConfigError(
            f"{POLICY_LOSS}.loss_mode={LOSS_MODE} needs {POLICY_LOSS}._target_={CONFIG_TARGET} "
            f"(got {target!r}); verl's own PolicyLossConfig has no scheme/alpha/prob_source fields. "
            f"Use the dapo_reweight config or add that override."
        )
    if loss_mode not in POLICY_LOSS_REGISTRY:
        hint = ""
        if loss_mode == LOSS_MODE:
            hint = " Our plugin did not register it: is verl-reweight installed (pip install verl-reweight)?"
        raise ConfigError(
            f"{POLICY_LOSS}.loss_mode={loss_mode!r} is not a registered verl policy loss "
            f"(registered: {sorted(POLICY_LOSS_REGISTRY)}).{hint}"
        )
    try:
        return omega_conf_to_dataclass(section)
    except Exception as e:  # hydra wraps our ValueError; surface the message that names the key
        cause = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        message = str(cause)  # our config class already names the full key; verl's errors may not
        raise ConfigError(message if POLICY_LOSS in message else f"{POLICY_LOSS}: {message}") from e


def check_config(cfg: DictConfig) -> None:
    """All of the driver-side checks above, in order; raises :class:`ConfigError`."""
    check_legacy_reward_keys(cfg)
    check_policy_loss(cfg)
