"""Checks of a composed training config that run in the driver before Ray starts.

verl validates its own fields (``verl.utils.config.validate_config``); these checks catch what verl
lets through silently or only reports from inside a Ray worker, minutes into a job:

- legacy reward keys that verl 0.9.x ignores or rewrites (``reward_model.reward_manager``,
  ``reward_model.overlong_buffer``, ...): refused, with the key to write instead;
- loss_mode ``reweight`` without our config class (verl's ``PolicyLossConfig`` has no
  scheme/alpha/prob_source/apply_to), our config class with another loss_mode, bad
  scheme/alpha/prob_source/apply_to (e.g. scheme normalize with alpha 0), each error naming its key;
- a loss_mode that is not registered in this process (our plugin did not load);
- verl's own numeric settings, the rules between them and verl's config classes built as its workers
  build them (:mod:`reweight.preflight`);
- an unknown math scorer for our reward function (``reward.custom_reward_function.reward_kwargs.scorer``);
- actor and rollout model configs that can disagree: ``actor_rollout_ref.model.override_config`` edits
  the actor's model only; vLLM starts from the checkpoint with ``rollout.engine_kwargs.vllm.hf_overrides``;
  and sequences longer than the model's positions (checkpoint read when ``model.path`` is local).
- inputs and outputs on this machine (:func:`check_paths`): data files, the model path, a
  ``resume_from_path`` that must be a verl checkpoint, a writable ``trainer.default_local_dir``;
  and a run whose checkpoint already reached ``total_training_steps`` (:func:`completed_step`).

The model-path rule (:func:`reweight.models.model_path_problem`) is shared by every CLI: an existing local path is
used; ``embedded://`` assets and remote URIs (``hdfs://``...) are left to their loaders; a path that
does not exist here is taken for a Hugging Face hub id only if it looks like one (``org/name``, and
its first component is not an existing local directory), otherwise it is refused without asking the hub.
"""

from __future__ import annotations

import netrc
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf

from reweight.configs import MONITOR_FREQ_KEY, PAIRED_REFILLS_KEY, POLICY_LOSS_KEY

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

    section = OmegaConf.select(cfg, POLICY_LOSS_KEY)
    if section is None:
        raise ConfigError(f"{POLICY_LOSS_KEY} is missing from the config")
    loss_mode = section.get("loss_mode", "vanilla")
    target = section.get("_target_", "")
    if loss_mode == LOSS_MODE and target != CONFIG_TARGET:
        raise ConfigError(
            f"{POLICY_LOSS_KEY}.loss_mode={LOSS_MODE} needs {POLICY_LOSS_KEY}._target_={CONFIG_TARGET} "
            f"(got {target!r}); verl's own PolicyLossConfig has no scheme/alpha/prob_source fields. "
            f"Use the dapo_reweight config or add that override."
        )
    if loss_mode not in POLICY_LOSS_REGISTRY:
        hint = ""
        if loss_mode == LOSS_MODE:
            hint = " Our plugin did not register it: is verl-reweight installed (pip install verl-reweight)?"
        raise ConfigError(
            f"{POLICY_LOSS_KEY}.loss_mode={loss_mode!r} is not a registered verl policy loss "
            f"(registered: {sorted(POLICY_LOSS_REGISTRY)}).{hint}"
        )
    try:
        return omega_conf_to_dataclass(section)
    except Exception as e:  # hydra wraps our ValueError; surface the message that names the key
        cause = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        message = str(cause)  # our config class already names the full key; verl's errors may not
        raise ConfigError(message if POLICY_LOSS_KEY in message else f"{POLICY_LOSS_KEY}: {message}") from e


SCORER_KEY = "reward.custom_reward_function.reward_kwargs.scorer"


def check_reward_scorer(cfg: DictConfig) -> None:
    """Refuse an unknown ``scorer`` for our reward function (it would fail only in the reward workers)."""
    from reweight.reward import SCORERS

    path = str(OmegaConf.select(cfg, "reward.custom_reward_function.path", default="") or "")
    scorer = OmegaConf.select(cfg, SCORER_KEY, default=None)
    if scorer is None or not path.endswith("reweight.reward"):
        return
    if scorer not in SCORERS:
        raise ConfigError(f"{SCORER_KEY}={scorer!r}: not a math scorer of reweight.reward; choose one of {', '.join(SCORERS)}")


MODEL = "actor_rollout_ref.model"
ROLLOUT = "actor_rollout_ref.rollout"
# override_config keys that change only how the actor runs the model, not the model itself.
ACTOR_ONLY_OVERRIDES = ("attn_implementation", "attention_dropout", "hidden_dropout", "use_cache", "model_config")
# rollouts that build their model from the actor's config (reweight.cpu.rollout.server_model_config).
ROLLOUTS_SHARING_ACTOR_CONFIG = ("hf",)
# rollouts that take the checkpoint plus engine_kwargs.<name>.hf_overrides (verl 0.9.1's vLLM server).
ROLLOUTS_WITH_HF_OVERRIDES = ("vllm",)


def _mapping(cfg: DictConfig, dotted: str) -> dict:
    """The resolved mapping at ``dotted`` (empty if absent)."""
    node = OmegaConf.select(cfg, dotted, default=None)
    return dict(OmegaConf.to_container(node, resolve=True)) if isinstance(node, DictConfig) else dict(node or {})


def _local_checkpoint_positions(path: str) -> int | None:
    """``max_position_embeddings`` of a local checkpoint's config.json (None if not local or not readable)."""
    import json
    import os

    config = os.path.join(os.path.expanduser(str(path)), "config.json")
    try:
        with open(config) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    value = data.get("max_position_embeddings", (data.get("text_config") or {}).get("max_position_embeddings"))
    return int(value) if value is not None else None


def check_model_config_agreement(cfg: DictConfig) -> None:
    """Refuse a config whose actor and rollout can build different models, or too-long sequences.

    verl 0.9.1 applies ``actor_rollout_ref.model.override_config`` to the actor's model config only;
    its vLLM server starts from the checkpoint plus ``rollout.engine_kwargs.vllm.hf_overrides`` (and
    takes ``max_model_len`` from the actor's overridden config). So every model override must be
    repeated there with the same value, and vice versa; other rollouts than ``hf`` (which builds its
    model from the actor's config) and vLLM cannot take overrides at all here.
    """
    name = str(OmegaConf.select(cfg, f"{ROLLOUT}.name", default="") or "")
    override = _mapping(cfg, f"{MODEL}.override_config")
    model_keys = {k: v for k, v in override.items() if k not in ACTOR_ONLY_OVERRIDES}
    if name not in ROLLOUTS_SHARING_ACTOR_CONFIG:
        hf_key = f"{ROLLOUT}.engine_kwargs.{name}.hf_overrides"
        hf_overrides = _mapping(cfg, hf_key)
        if model_keys and name not in ROLLOUTS_WITH_HF_OVERRIDES:
            key = next(iter(model_keys))
            raise ConfigError(
                f"{MODEL}.override_config.{key}={model_keys[key]!r} reaches the actor only: the {name!r} rollout "
                f"starts from the unedited checkpoint. Edit the checkpoint's config.json instead, or use the "
                f"vllm rollout (with {ROLLOUT}.engine_kwargs.vllm.hf_overrides.{key})"
            )
        for key in sorted(set(model_keys) | set(hf_overrides)):
            actor, rollout = model_keys.get(key, "<checkpoint>"), hf_overrides.get(key, "<checkpoint>")
            if actor != rollout:
                raise ConfigError(
                    f"{MODEL}.override_config.{key}={actor!r} but {hf_key}.{key}={rollout!r}: the actor and "
                    f"the rollout would run different models; set both to the same value"
                )
    positions = model_keys.get("max_position_embeddings")
    where = f"{MODEL}.override_config.max_position_embeddings"
    if positions is None:
        path = OmegaConf.select(cfg, f"{MODEL}.path", default=None, throw_on_missing=False)
        positions = _local_checkpoint_positions(path) if isinstance(path, str) else None
        where = f"max_position_embeddings of {path}/config.json"
    if positions is None:
        return
    prompt = OmegaConf.select(cfg, "data.max_prompt_length", default=0) or 0
    response = OmegaConf.select(cfg, "data.max_response_length", default=0) or 0
    if prompt + response > positions:
        raise ConfigError(
            f"data.max_prompt_length + data.max_response_length = {prompt} + {response} = {prompt + response} "
            f"exceeds {where} = {positions}: the model has no positions for the end of long responses "
            f"(extend it with {MODEL}.override_config.max_position_embeddings and, for vllm, "
            f"{ROLLOUT}.engine_kwargs.vllm.hf_overrides.max_position_embeddings)"
        )
    max_model_len = OmegaConf.select(cfg, f"{ROLLOUT}.max_model_len", default=None)
    if max_model_len is not None and int(max_model_len) > positions:
        raise ConfigError(f"{ROLLOUT}.max_model_len={max_model_len} exceeds {where} = {positions}")


def check_config(cfg: DictConfig) -> None:
    """All of the driver-side checks above, in order; raises :class:`ConfigError`."""
    from reweight.preflight import check_verl_settings

    check_legacy_reward_keys(cfg)
    check_policy_loss(cfg)
    check_verl_settings(cfg)  # verl's own keys: types, ranges, rules between keys, verl's config classes
    check_reward_scorer(cfg)
    check_model_config_agreement(cfg)
    check_monitor(cfg)
    check_paired_refills(cfg)


def monitor_freq(cfg: Any) -> int:
    """``reweight.monitor.freq`` of a composed config (0 when absent); raises :class:`ConfigError` on a bad value."""
    value = OmegaConf.select(cfg, MONITOR_FREQ_KEY, default=0) if isinstance(cfg, DictConfig) else 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{MONITOR_FREQ_KEY}={value!r}: must be an integer >= 0 (0 turns the direction monitor off)")
    return value


def check_monitor(cfg: DictConfig) -> None:
    """The direction monitor (reweight/monitor.py) snapshots the actor's full FSDP weights: no LoRA, FSDP only."""
    freq = monitor_freq(cfg)
    if freq == 0:
        return
    model = OmegaConf.select(cfg, "actor_rollout_ref.model", default=None) or {}
    lora = (model.get("lora", None) or {}).get("rank", 0) or model.get("lora_rank", 0) or 0
    if lora > 0 or model.get("lora_adapter_path", None):
        raise ConfigError(f"{MONITOR_FREQ_KEY}={freq} with LoRA: the monitor snapshots full weights; set {MONITOR_FREQ_KEY}=0")
    strategy = OmegaConf.select(cfg, "actor_rollout_ref.actor.strategy")
    if strategy not in ("fsdp", "fsdp2"):
        raise ConfigError(
            f"{MONITOR_FREQ_KEY}={freq} needs actor_rollout_ref.actor.strategy=fsdp or fsdp2, got {strategy!r}"
        )


def paired_refills(cfg: Any) -> bool:
    """``reweight.paired_refills`` of a composed config (False when absent); raises :class:`ConfigError` on a non-bool."""
    value = OmegaConf.select(cfg, PAIRED_REFILLS_KEY, default=False) if isinstance(cfg, DictConfig) else False
    if not isinstance(value, bool):
        raise ConfigError(f"{PAIRED_REFILLS_KEY}={value!r}: must be true or false")
    return value


def check_paired_refills(cfg: DictConfig) -> None:
    """Paired refills (reweight/paired.py) replace verl's *sync* replay buffer; async trainers sample differently."""
    if not paired_refills(cfg):
        return
    mode = OmegaConf.select(cfg, "trainer.v1.trainer_mode", default=None)
    if mode != "sync":
        raise ConfigError(
            f"{PAIRED_REFILLS_KEY}=true needs trainer.v1.trainer_mode=sync, got {mode!r} "
            f"(async trainers refill without waves; set {PAIRED_REFILLS_KEY}=false)"
        )
    custom = OmegaConf.select(cfg, "trainer.v1.sampler.custom_sampler.name", default=None)
    if custom:
        raise ConfigError(
            f"{PAIRED_REFILLS_KEY}=true with trainer.v1.sampler.custom_sampler.name={custom!r}: paired refills "
            f"replace verl's own sync sampler; drop one of them"
        )


# ------------------------------------------------------------------------------------------ W&B

# wandb modes that need no account.
NO_ACCOUNT_MODES = ("offline", "disabled", "dryrun")
DEFAULT_BASE_URL = "https://api.wandb.ai"


class WandbCredentialsError(ValueError):
    """W&B logging requested without credentials and not in an offline/disabled mode."""


def uses_wandb(loggers: Sequence[str] | str | None) -> bool:
    """Whether a ``trainer.logger`` value makes verl call ``wandb.init`` (``tracking`` is its old alias)."""
    if loggers is None:
        return False
    if isinstance(loggers, str):
        loggers = [loggers]
    return any(name in ("wandb", "tracking") for name in loggers)


def wandb_mode(environ: Mapping[str, str]) -> str:
    """The wandb mode the environment selects (``online`` unless WANDB_MODE / WANDB_DISABLED say otherwise)."""
    if environ.get("WANDB_DISABLED", "").strip().lower() in ("1", "true", "yes"):
        return "disabled"
    return environ.get("WANDB_MODE", "").strip().lower() or "online"


def _netrc_has_host(environ: Mapping[str, str]) -> Path | None:
    host = urlparse(environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL).hostname
    home = environ.get("HOME") or os.path.expanduser("~")
    path = Path(environ.get("NETRC") or Path(home) / ".netrc")
    if not path.is_file() or host is None:
        return None
    try:
        return path if netrc.netrc(str(path)).authenticators(host) else None
    except (netrc.NetrcParseError, OSError):
        return None


def check_wandb_credentials(loggers: Sequence[str] | str | None, environ: Mapping[str, str]) -> str | None:
    """Raise :class:`WandbCredentialsError` if wandb would need an account it does not have.

    Returns a note to print when the credentials come from a ``~/.netrc`` entry (every node that runs
    the trainer needs the same file), else None.
    """
    if not uses_wandb(loggers):
        return None
    mode = wandb_mode(environ)
    if mode in NO_ACCOUNT_MODES:
        return None
    if environ.get("WANDB_API_KEY"):
        return None
    found = _netrc_has_host(environ)
    if found is not None:
        return (
            f"W&B credentials come from {found}, not from WANDB_API_KEY: the node that runs the trainer "
            f"needs the same entry (a shared home directory), or export WANDB_API_KEY before submitting."
        )
    raise WandbCredentialsError(
        f"trainer.logger={list(loggers) if not isinstance(loggers, str) else loggers} includes wandb, "
        f"WANDB_MODE is {environ.get('WANDB_MODE') or 'unset'} (online), and no W&B credentials were found "
        f"(no WANDB_API_KEY in the environment, no entry for "
        f"{urlparse(environ.get('WANDB_BASE_URL') or DEFAULT_BASE_URL).hostname} in ~/.netrc). "
        f"Export WANDB_API_KEY (or run `wandb login`), or set WANDB_MODE=offline (runs are written "
        f"locally, `wandb sync` later) or WANDB_MODE=disabled, or drop wandb from trainer.logger."
    )


# ------------------------------------------------------------------------------------------ paths

EMBEDDED_SCHEME = "embedded://"
DATA_KEYS = ("data.train_files", "data.val_files")
MODEL_KEY = "actor_rollout_ref.model.path"
STEP_DIR = re.compile(r"global_step_(\d+)$")


def _is_uri(value: str) -> bool:
    """``embedded://``, ``hdfs://``, ``s3://``...: resolved by their own loaders, not a local path."""
    return "://" in value


def check_model_path(path: str, what: str) -> None:
    from reweight.models import model_path_problem

    """Raise :class:`ConfigError` ``<what>=<path>: <why>`` unless ``path`` can be a model (see above)."""
    problem = model_path_problem(path)
    if problem:
        raise ConfigError(f"{what}={str(path)!r}: {problem}")


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


# verl's reward managers (naive, dapo, gdpo, limited, remote) read these columns of every row
REWARD_COLUMNS = ("data_source", "reward_model")
VERL_REWARD_MANAGERS = ("naive", "dapo", "gdpo", "limited", "remote")


def data_columns(cfg: DictConfig) -> list[str]:
    """The top-level columns verl reads from every row of the data files (none with a custom dataset class)."""
    if OmegaConf.select(cfg, "data.custom_cls.path", default=None):
        return []  # a custom dataset class reads what it likes
    columns = [str(OmegaConf.select(cfg, "data.prompt_key", default="prompt") or "prompt")]
    source = OmegaConf.select(cfg, "reward.reward_manager.source", default="register")
    name = OmegaConf.select(cfg, "reward.reward_manager.name", default=None)
    if source == "register" and name in VERL_REWARD_MANAGERS:
        columns += [c for c in REWARD_COLUMNS if c not in columns]
    return columns


def check_data_files(cfg: DictConfig) -> None:
    """Every local file of ``data.train_files`` / ``data.val_files`` exists and verl can read it: a parquet
    file with rows and the columns verl reads, or a .json/.jsonl file (URIs and embedded:// skipped)."""
    from reweight.file_checks import data_file_problem

    columns = data_columns(cfg)
    custom = OmegaConf.select(cfg, "data.custom_cls.path", default=None)
    local = [(key, item, Path(item).expanduser()) for key in DATA_KEYS
             for item in _as_list(OmegaConf.select(cfg, key, default=None)) if not _is_uri(item)]
    for key, item, path in local:  # every missing file first: the cheapest answer, and the likeliest typo
        if not path.exists():
            raise ConfigError(f"{key}={item!r}: file not found")
    for key, item, path in local:
        if path.is_dir() and (custom or path.name.endswith(".parquet")):  # a dataset class / reader of its own
            if not any(path.glob("*.parquet")):
                raise ConfigError(f"{key}={item!r}: a directory without .parquet files")
            continue
        problem = data_file_problem(path, columns)
        if problem:
            raise ConfigError(f"{key}={item!r}: {problem}")


def check_model_files(cfg: DictConfig) -> None:
    """A local ``actor_rollout_ref.model.path`` is a Hugging Face model directory verl can load (config.json
    that loads, weights, tokenizer); its ``hf_config_path`` / ``tokenizer_path`` where set and local."""
    from reweight.file_checks import model_dir_problem

    model = str(OmegaConf.select(cfg, MODEL_KEY))
    if _is_uri(model) or not Path(model).expanduser().exists():
        return  # embedded://, hdfs://... or a hub id: their loaders report
    parts = {}
    for part in ("hf_config_path", "tokenizer_path"):
        value = OmegaConf.select(cfg, f"{MODEL}.{part}", default=None)
        if value is None:
            parts[part] = Path(model).expanduser()
            continue
        local = Path(str(value)).expanduser()
        if not _is_uri(str(value)) and not local.exists():
            from reweight.models import model_path_problem

            problem = model_path_problem(str(value))
            if problem:
                raise ConfigError(f"{MODEL}.{part}={str(value)!r}: {problem}")
        parts[part] = local if local.is_dir() else None
    if not OmegaConf.select(cfg, f"{MODEL}.load_tokenizer", default=True):
        parts["tokenizer_path"] = None
    problem = model_dir_problem(
        Path(model).expanduser(), config=parts["hf_config_path"], tokenizer=parts["tokenizer_path"],
        trust_remote_code=bool(OmegaConf.select(cfg, f"{MODEL}.trust_remote_code", default=False)),
    )
    if problem:
        raise ConfigError(f"{MODEL_KEY}={model!r}: {problem}")



def _absolute(path: str) -> Path:
    """As verl resolves checkpoint paths: relative to the working directory."""
    return Path(os.path.abspath(os.path.expanduser(path)))


def check_resume(cfg: DictConfig) -> None:
    """``trainer.resume_mode`` is known; with ``resume_path``, ``resume_from_path`` is a verl checkpoint.

    A verl checkpoint is a ``global_step_N`` directory holding the actor's shards in ``actor/``.
    """
    mode = OmegaConf.select(cfg, "trainer.resume_mode", default="auto")
    if mode not in ("auto", "disable", "resume_path"):
        raise ConfigError(f"trainer.resume_mode={mode!r}: use auto, disable or resume_path")
    if mode != "resume_path":
        return
    value = OmegaConf.select(cfg, "trainer.resume_from_path", default=None)
    if not value:
        raise ConfigError("trainer.resume_mode=resume_path needs trainer.resume_from_path=<checkpoint dir>/global_step_N")
    path = _absolute(str(value))
    if not STEP_DIR.search(path.name):
        raise ConfigError(f"trainer.resume_from_path={value!r}: not a verl checkpoint (expected a directory named global_step_N)")
    if not path.is_dir():
        raise ConfigError(f"trainer.resume_from_path={value!r}: no such directory")
    if not (path / "actor").is_dir():
        raise ConfigError(f"trainer.resume_from_path={value!r}: not a verl checkpoint (no actor/ inside)")


def check_writable_dir(value: str, key: str) -> None:
    """``value`` is a directory this user can create and write (probed with a temporary directory that is
    removed at once: nothing is left behind)."""
    from reweight.file_checks import output_dir_problem

    problem = output_dir_problem(str(value))
    if problem:
        raise ConfigError(f"{key}={value!r}: {problem}")


def _saved_steps(root: Path) -> list[tuple[int, Path]]:
    """(N, directory) of every ``global_step_N`` directory of ``root``, in ascending order of N."""
    return sorted((int(m.group(1)), d) for d in root.iterdir() if (m := STEP_DIR.search(d.name)) and d.is_dir())


def _good_steps_below(root: Path, step: int) -> list[int]:
    """The ``global_step_N`` of ``root`` below ``step`` that pass :func:`checkpoint_problem`, newest first."""
    from reweight.file_checks import checkpoint_problem

    return [n for n, _ in reversed(_saved_steps(root)) if n < step and checkpoint_problem(root / f"global_step_{n}") is None]


def check_checkpoint(cfg: DictConfig) -> None:
    """The checkpoint verl would resume from is complete; refused in one line naming the file otherwise.

    verl writes ``latest_checkpointed_iteration.txt`` only after a step's files are saved, so a run killed
    while saving resumes from the previous step by itself. A damaged file in the step the tracker names
    (a full disk, a copy that was cut short) would fail inside a Ray worker: refused here, with the
    overrides that resume from the newest good earlier step or start afresh. Nothing is moved or deleted:
    which way to go is the user's choice (a damaged save often means the disk is full again).
    """
    from reweight.file_checks import checkpoint_problem
    from reweight.models import TRACKER_FILE

    mode = OmegaConf.select(cfg, "trainer.resume_mode", default="auto")
    if mode == "disable":
        return
    if mode == "resume_path":
        value = str(cfg.trainer.resume_from_path)
        problem = checkpoint_problem(_absolute(value))
        if problem:
            raise ConfigError(f"trainer.resume_from_path={value!r}: {problem}")
        return
    root = _absolute(str(cfg.trainer.default_local_dir))
    tracker = root / TRACKER_FILE
    if not tracker.is_file():
        return  # verl trains from scratch
    text = tracker.read_text().strip()
    if not text.isdigit():
        raise ConfigError(
            f"trainer.default_local_dir={str(cfg.trainer.default_local_dir)!r}: {tracker} holds {text[:40]!r}, not a step "
            f"number; write the step to resume from into it, or add trainer.resume_mode=disable to start afresh"
        )
    step = int(text)
    folder = root / f"global_step_{step}"
    where = f"trainer.default_local_dir={str(cfg.trainer.default_local_dir)!r}"
    if not folder.is_dir():
        others = [d.name for _, d in _saved_steps(root)]
        if others:  # verl would train from scratch and save over them
            raise ConfigError(
                f"{where}: {TRACKER_FILE} names step {step} but global_step_{step} does not exist (there are "
                f"{', '.join(others)}); verl would start from scratch and save over them. Resume with "
                f"trainer.resume_mode=resume_path trainer.resume_from_path={root / others[-1]}, or add trainer.resume_mode=disable"
            )
        return
    problem = checkpoint_problem(folder)
    if problem is None:
        return
    good = _good_steps_below(root, step)
    resume = (f"To resume from global_step_{good[0]} add trainer.resume_mode=resume_path "
              f"trainer.resume_from_path={root / f'global_step_{good[0]}'}; to start afresh" if good else "To start afresh")
    raise ConfigError(
        f"{where}: the latest checkpoint global_step_{step} is damaged: {problem} (a full disk or an interrupted "
        f"copy; nothing was changed). {resume} add trainer.resume_mode=disable"
    )


def check_paths(cfg: DictConfig) -> None:
    """The run's inputs exist and verl can read them, the checkpoint it resumes from is complete, and its
    output directory is writable, checked on this machine (no Ray, no hub)."""
    check_data_files(cfg)
    model = OmegaConf.select(cfg, MODEL_KEY, default=None)
    if model is None:
        raise ConfigError(f"{MODEL_KEY} is not set")
    check_model_path(str(model), MODEL_KEY)
    check_model_files(cfg)
    check_resume(cfg)
    check_writable_dir(str(cfg.trainer.default_local_dir), "trainer.default_local_dir")
    check_checkpoint(cfg)


def completed_step(cfg: DictConfig) -> int | None:
    """The checkpointed step this run would resume from, if it already reached ``total_training_steps``.

    Reads the checkpoint verl would load (``<default_local_dir>/latest_checkpointed_iteration.txt`` for
    ``resume_mode=auto``, the ``global_step_N`` of ``resume_from_path``); None when there is none, when it
    is short of ``trainer.total_training_steps``, or when the step count is set by epochs only.
    """
    total = OmegaConf.select(cfg, "trainer.total_training_steps", default=None)
    mode = OmegaConf.select(cfg, "trainer.resume_mode", default="auto")
    if total is None or mode == "disable":
        return None
    if mode == "resume_path":
        match = STEP_DIR.search(_absolute(str(cfg.trainer.resume_from_path)).name)
        step = int(match.group(1)) if match else None
    else:
        from reweight.models import tracked_step

        root = _absolute(str(cfg.trainer.default_local_dir))
        step = tracked_step(root)
        if step is None:
            return None
        if not (root / f"global_step_{step}").is_dir():
            return None  # verl then trains from scratch
    return step if step is not None and step >= int(total) else None
