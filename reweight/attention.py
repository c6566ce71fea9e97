"""Attention without flash-attn: pick PyTorch's ``sdpa`` for a CUDA run, or refuse what needs flash-attn.

flash-attn is an optional speed-up of the GPU install (docs/gpu.md): PyPI serves it only as source, so it
is not a requirement. What verl 0.9.1 does without it, read from its code:

- ``actor_rollout_ref.model.override_config.attn_implementation`` defaults to ``flash_attention_2``
  (``verl/workers/config/model.py``); Hugging Face then refuses to build the model, inside a Ray worker,
  minutes into the job. With ``sdpa`` the FSDP actor runs.
- ``use_remove_padding`` runs without flash-attn: ``verl/utils/attention_utils.py`` falls back to pure-torch
  (un)padding, and transformers' ``sdpa`` masks the packed sequences apart from their ``position_ids``
  (our CPU runs use exactly this: ``configs/embedded.yaml``). Slower than flash-attn's varlen kernel, correct.
- Ulysses sequence parallelism (``ulysses_sequence_parallel_size > 1``) does not: verl inserts its
  all-to-all by replacing transformers' ``_flash_attention_forward``
  (``verl/models/transformers/monkey_patch.py``); under ``sdpa`` that function is never called, so every
  rank would attend within its own slice of the sequence only: wrong attention, silently. Refused.
- ``strategy=megatron`` imports ``flash_attn.bert_padding`` unconditionally
  (``verl/utils/megatron/pipeline_parallel.py``: "flash 2 is a must for Megatron"). Refused.

The check applies to a run that targets CUDA (not verl's CPU platform, not NPU, which has its own kernels),
and looks at flash-attn on the machine that runs it (the driver; ``reweight-launch doctor`` looks on every
node).
"""

from __future__ import annotations

import importlib.util

from omegaconf import DictConfig, OmegaConf, open_dict

from reweight.checks import ConfigError

ATTN_KEY = "actor_rollout_ref.model.override_config.attn_implementation"
FALLBACK = "sdpa"
FLASH_IMPLEMENTATIONS = ("flash_attention_2", "flash_attention_3")
# where verl 0.9.1 reads the Ulysses size of the actor (the first is the deprecated alias it copies over)
ACTOR_SP_KEYS = (
    "actor_rollout_ref.actor.ulysses_sequence_parallel_size",
    "actor_rollout_ref.actor.fsdp_config.ulysses_sequence_parallel_size",
)
REF_SP_KEYS = (
    "actor_rollout_ref.ref.ulysses_sequence_parallel_size",
    "actor_rollout_ref.ref.fsdp_config.ulysses_sequence_parallel_size",
)
STRATEGY_KEY = "actor_rollout_ref.actor.strategy"
FLASH_ONLY_STRATEGIES = ("megatron",)
INSTALL_HINT = "install flash-attn (docs/gpu.md) or"


def flash_attn_available() -> bool:
    """Whether ``import flash_attn`` can succeed here (without importing it: it loads CUDA kernels)."""
    try:
        return importlib.util.find_spec("flash_attn") is not None
    except (ImportError, ValueError):  # a broken or half-removed install
        return False


def _sp_size(cfg: DictConfig, key: str) -> int:
    value = OmegaConf.select(cfg, key, default=1, throw_on_missing=False)
    return int(value) if value is not None else 1


def check_attention(cfg: DictConfig, cpu: bool, flash_attn: bool | None = None) -> str | None:
    """Pick ``sdpa`` or refuse a CUDA config that needs flash-attn, when flash-attn is not importable.

    Sets :data:`ATTN_KEY` to ``sdpa`` when it is unset (verl's default would be ``flash_attention_2``) and
    returns the one line saying so; returns None when nothing changes (flash-attn present, not CUDA, or an
    implementation that needs no flash-attn already chosen). Raises :class:`ConfigError` naming the key for
    ``flash_attention_*`` asked for explicitly, Ulysses sequence parallelism > 1, or ``strategy=megatron``.
    ``cpu``: the run uses verl's CPU platform (:func:`reweight.train.targets_cpu`); ``flash_attn``: whether
    flash-attn is importable (default: :func:`flash_attn_available`).
    """
    if cpu or str(OmegaConf.select(cfg, "trainer.device", default="cuda") or "cuda") != "cuda":
        return None
    if flash_attn is None:
        flash_attn = flash_attn_available()
    if flash_attn:
        return None
    missing = "flash_attn is not importable here"
    strategy = OmegaConf.select(cfg, STRATEGY_KEY, default=None)
    if strategy in FLASH_ONLY_STRATEGIES:
        raise ConfigError(f"{STRATEGY_KEY}={strategy}: verl's Megatron path needs flash-attn and {missing}; "
                          f"{INSTALL_HINT} use strategy=fsdp")
    from verl.trainer.ppo.utils import need_reference_policy

    keys = ACTOR_SP_KEYS + (REF_SP_KEYS if need_reference_policy(cfg) else ())
    for key in keys:
        size = _sp_size(cfg, key)
        if size > 1:
            raise ConfigError(
                f"{key}={size}: verl's Ulysses sequence parallelism runs inside flash-attn's attention only "
                f"(under sdpa each GPU would attend within its slice of the sequence) and {missing}; "
                f"{INSTALL_HINT} set it to 1"
            )
    chosen = OmegaConf.select(cfg, ATTN_KEY, default=None)
    if chosen in FLASH_IMPLEMENTATIONS:
        raise ConfigError(f"{ATTN_KEY}={chosen} but {missing}; {INSTALL_HINT} set it to {FALLBACK}")
    if chosen is not None:
        return None
    with open_dict(cfg):
        OmegaConf.update(cfg, ATTN_KEY, FALLBACK, force_add=True)
    return f"{missing}: using PyTorch attention, {ATTN_KEY}={FALLBACK} (flash-attn is an optional speed-up: docs/gpu.md)"
