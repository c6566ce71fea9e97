"""Pre-flight of verl's own settings: every numeric key verl reads, checked in the driver before Ray.

verl 0.9.1 checks few of its values, and most of those checks run inside a Ray worker, after a queue
wait and a node allocation: ``data.train_batch_size=0`` becomes a ``ZeroDivisionError`` in the
trainer's dataloader, ``actor_rollout_ref.actor.optim.lr=abc`` a traceback in a worker, and
``actor_rollout_ref.actor.clip_ratio_low=-0.2`` or ``rollout.gpu_memory_utilization=1.5`` are not
refused at all. :func:`check_verl_settings` refuses each of them in one line naming the key and the
value (:class:`reweight.checks.ConfigError`, exit status 2 through :mod:`reweight.cli_errors`). It runs
inside :func:`reweight.checks.check_config`, the pre-flight that ``reweight-train``, every job and
sweep point of ``reweight-launch`` and every arm of ``reweight-study`` already run before anything is
written, submitted or started.

Three layers, in order:

1. **The table** (:func:`settings`): every numeric key of the sections verl reads for a PPO/DAPO run,
   with its type, derived rather than written by hand:

   - a section with a ``_target_`` (the actor, its optimizer and engine, the rollout and its
     ``val_kwargs``, the algorithm and its KL/filter sections, ...): the annotations of the verl
     dataclass it names (``int``, ``float``, ``Optional[...]``), read with ``typing.get_type_hints``;
   - ``data`` and ``trainer``, which verl keeps as plain dicts: the type of verl's own default in
     ``verl/trainer/config/{data/legacy_data.yaml, ppo_trainer.yaml}``.

   Each key is checked for its type (an integer, or a finite number; ``None`` only where verl's
   annotation or default is ``None``). :data:`RANGES` adds a range to the keys where a value of the right
   type is still wrong (``>= 1``, ``(0, 1]``...), each with the reason.
2. **Rules between keys** (:data:`CROSS_RULES`): the mini-batch within the batch, the world size
   against the rollout's parallelism, the batch against the number of ranks.
3. **verl's own config classes**, built with verl's own conversion
   (:func:`verl.utils.config.omega_conf_to_dataclass`, as ``engine_workers.ActorRolloutRefWorker`` and
   ``agent_loop`` do for the actor, reference and rollout; the trainer for the algorithm), so that every
   ``__post_init__`` check verl has runs here too; their errors are reworded to name the key.

Left out: string and boolean keys (verl's ``__post_init__`` checks the enums it knows, layer 3), the
model section's loading (``HFModelConfig`` reads the tokenizer from ``model.path``: too slow and, for a
launcher, the wrong machine), the critic (off for DAPO, and its model section would load too), the
profiler sections, and keys no dataclass or default of verl types (``None`` defaults not in
:data:`RANGES`). The reference's keys are in the table always; its class is built only when a
reference model is used.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from reweight.checks import ConfigError

# Sections walked for ``_target_`` dataclasses, the plain ones first: keys like ``rollout.response_length``
# interpolate ``data.max_response_length``, and a refusal names the key the user writes.
# Subtrees skipped: profiling only, or built from a path.
SECTIONS = ("data", "trainer", "algorithm", "actor_rollout_ref")
SKIPPED = ("profiler", "actor_rollout_ref.model")
# sections verl keeps as plain dicts: their keys' types come from verl's own defaults (file, key in it)
PLAIN_DEFAULTS = {"data": ("data/legacy_data.yaml", None), "trainer": ("ppo_trainer.yaml", "trainer")}


@dataclass(frozen=True)
class Range:
    """What a value of the right type must also satisfy; ``why`` says what breaks otherwise.

    ``kind`` names the type where verl's default is ``None`` and so says nothing (``int``/``float``);
    ``optional``: ``None`` is allowed (verl's default); ``also``: special values outside the range
    (``-1`` = "all").
    """

    low: float | None = None
    low_open: bool = False
    high: float | None = None
    high_open: bool = False
    why: str = ""
    also: tuple[float, ...] = ()
    kind: type | None = None
    optional: bool = False

    def admits(self, value: float) -> bool:
        if value in self.also:
            return True
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def describe(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        text = " and ".join(parts)
        return text + "".join(f" (or {v:g})" for v in self.also)


# ``actor_rollout_ref.ref`` key -> the ``ActorConfig`` field verl's worker renames it to before building it
# (``engine_workers.ActorRolloutRefWorker.init_model``)
REFERENCE_RENAMES = {
    "log_prob_micro_batch_size": "ppo_micro_batch_size",
    "log_prob_micro_batch_size_per_gpu": "ppo_micro_batch_size_per_gpu",
    "log_prob_use_dynamic_bsz": "use_dynamic_bsz",
    "log_prob_max_token_len_per_gpu": "ppo_max_token_len_per_gpu",
}
AT_LEAST_1 = Range(1)
AOR = "actor_rollout_ref"
ACTOR, ROLLOUT, OPTIM = f"{AOR}.actor", f"{AOR}.rollout", f"{AOR}.actor.optim"

# The ranges verl does not check (or checks only in a worker), by key. Everything else in the table is
# checked for its type and finiteness only.
# The FSDP engine settings of the actor and of the reference (verl's FSDPEngineConfig).
FSDP_RANGES = {
    "fsdp_config.fsdp_size": Range(1, also=(-1,), why="ranks per FSDP shard group; -1 = all"),
    "fsdp_config.ulysses_sequence_parallel_size": AT_LEAST_1,
    "fsdp_config.entropy_from_logits_chunk_size": Range(1, why="tokens per entropy chunk"),
}

RANGES: dict[str, Range] = {
    "data.train_batch_size": Range(1, why="prompts per training step; 0 divides by zero in verl's dataloader"),
    "data.gen_batch_size": Range(1, optional=True, kind=int, why="prompts per generation batch"),
    "data.max_prompt_length": Range(1, why="prompt tokens"),
    "data.max_response_length": Range(1, why="response tokens"),
    "data.train_max_samples": Range(1, also=(-1,), why="-1 = the whole file"),
    "data.val_max_samples": Range(1, also=(-1,), why="-1 = the whole file"),
    "data.dataloader_num_workers": Range(0, why="worker processes"),
    "data.filter_overlong_prompts_workers": AT_LEAST_1,
    "data.image_patch_size": Range(1, why="pixels per image patch"),
    "trainer.nnodes": Range(1, why="nodes"),
    "trainer.n_gpus_per_node": Range(1, why="training ranks per node"),
    "trainer.total_epochs": AT_LEAST_1,
    "trainer.total_training_steps": Range(1, optional=True, kind=int, why="null: from total_epochs"),
    "trainer.critic_warmup": Range(0),
    "trainer.log_val_generations": Range(0),
    "trainer.ray_wait_register_center_timeout": Range(0, low_open=True, why="seconds"),
    "trainer.esi_redundant_time": Range(0, why="extra time before an ESI shutdown to save a checkpoint"),
    f"{ACTOR}.ppo_mini_batch_size": Range(1, why="prompts per actor update"),
    f"{ACTOR}.ppo_micro_batch_size": Range(1, optional=True),
    f"{ACTOR}.ppo_micro_batch_size_per_gpu": Range(1, optional=True),
    f"{ACTOR}.ppo_max_token_len_per_gpu": AT_LEAST_1,
    f"{ACTOR}.ppo_epochs": AT_LEAST_1,
    f"{ACTOR}.clip_ratio": Range(0, why="the PPO clip range 1 ± ε needs ε >= 0"),
    f"{ACTOR}.clip_ratio_low": Range(0, why="the PPO clip range's lower ε; negative inverts the clip"),
    f"{ACTOR}.clip_ratio_high": Range(0, why="the PPO clip range's upper ε; negative inverts the clip"),
    f"{ACTOR}.clip_ratio_c": Range(1, low_open=True, why="dual-clip PPO's bound; verl asserts > 1 in the loss"),
    f"{ACTOR}.kl_loss_coef": Range(0),
    f"{ACTOR}.grad_clip": Range(0, low_open=True, why="the gradient-norm bound; 0 zeroes every update"),
    f"{ACTOR}.ulysses_sequence_parallel_size": AT_LEAST_1,
    f"{ACTOR}.loss_scale_factor": Range(1, optional=True, why="the divisor of seq-mean-token-sum-norm; null: the response length"),
    f"{ACTOR}.entropy_from_logits_chunk_size": Range(1, why="tokens per entropy chunk"),
    **{f"{part}.{key}": r for part in (ACTOR, f"{AOR}.ref") for key, r in FSDP_RANGES.items()},
    f"{AOR}.ref.ulysses_sequence_parallel_size": AT_LEAST_1,
    f"{AOR}.ref.entropy_from_logits_chunk_size": Range(1, why="tokens per entropy chunk"),
    f"{OPTIM}.lr": Range(0, why="the learning rate"),
    f"{OPTIM}.weight_decay": Range(0),
    f"{OPTIM}.lr_warmup_steps_ratio": Range(0, high=1, why="a fraction of the training steps"),
    f"{OPTIM}.min_lr_ratio": Range(0, high=1, optional=True, why="a fraction of lr"),
    f"{OPTIM}.clip_grad": Range(0, low_open=True, why="the gradient-norm bound; 0 zeroes every update"),
    f"{ROLLOUT}.n": Range(1, why="responses per prompt"),
    f"{ROLLOUT}.temperature": Range(0, low_open=True, why="training samples with temperature > 0; 0 would be greedy, "
                                    "and the actor's log-probs divide by it"),
    f"{ROLLOUT}.top_p": Range(0, low_open=True, high=1),
    f"{ROLLOUT}.top_k": Range(0, also=(-1,), why="-1 = off"),
    f"{ROLLOUT}.repetition_penalty": Range(0, low_open=True),
    f"{ROLLOUT}.prompt_length": AT_LEAST_1,
    f"{ROLLOUT}.response_length": AT_LEAST_1,
    f"{ROLLOUT}.gpu_memory_utilization": Range(0, low_open=True, high=1, why="a fraction of each GPU's memory"),
    f"{ROLLOUT}.tensor_model_parallel_size": AT_LEAST_1,
    f"{ROLLOUT}.data_parallel_size": AT_LEAST_1,
    f"{ROLLOUT}.pipeline_model_parallel_size": AT_LEAST_1,
    f"{ROLLOUT}.expert_parallel_size": AT_LEAST_1,
    f"{ROLLOUT}.max_num_batched_tokens": AT_LEAST_1,
    f"{ROLLOUT}.max_num_seqs": AT_LEAST_1,
    f"{ROLLOUT}.max_model_len": Range(1, optional=True),
    f"{ROLLOUT}.log_prob_micro_batch_size": Range(1, optional=True),
    f"{ROLLOUT}.log_prob_micro_batch_size_per_gpu": Range(1, optional=True),
    f"{ROLLOUT}.log_prob_max_token_len_per_gpu": AT_LEAST_1,
    f"{ROLLOUT}.over_sample_rate": Range(0),
    f"{ROLLOUT}.val_kwargs.temperature": Range(0, why="0 = greedy validation"),
    f"{ROLLOUT}.val_kwargs.top_p": Range(0, low_open=True, high=1),
    f"{ROLLOUT}.val_kwargs.top_k": Range(0, also=(-1,), why="-1 = off"),
    f"{ROLLOUT}.val_kwargs.n": Range(1, why="samples per validation prompt"),
    f"{ROLLOUT}.agent.num_workers": AT_LEAST_1,
    f"{ROLLOUT}.multi_turn.max_parallel_calls": Range(1, why="tool calls at once"),
    f"{ROLLOUT}.checkpoint_engine.update_weights_bucket_megabytes": Range(1, why="the weight-sync bucket"),
    f"{AOR}.ref.log_prob_micro_batch_size": Range(1, optional=True),
    f"{AOR}.ref.log_prob_micro_batch_size_per_gpu": Range(1, optional=True),
    f"{AOR}.ref.log_prob_max_token_len_per_gpu": Range(1, optional=True),
    "algorithm.gamma": Range(0, high=1, why="a discount factor"),
    "algorithm.lam": Range(0, high=1, why="GAE's lambda"),
    "algorithm.kl_ctrl.kl_coef": Range(0),
    "algorithm.kl_ctrl.horizon": AT_LEAST_1,
    "algorithm.kl_ctrl.target_kl": Range(0),
    "algorithm.filter_groups.max_inflight_gen_batches": AT_LEAST_1,
}


@dataclass(frozen=True)
class Setting:
    """One numeric key of the table: its type (``int`` or ``float``), whether ``None`` is allowed, its
    range (None: type and finiteness only), and where the type comes from."""

    key: str
    kind: type
    optional: bool
    range: Range | None
    source: str

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is refused for this key, or None."""
        if value is None:
            return None if self.optional else "must be set"
        what = "an integer" if self.kind is int else "a finite number"
        in_range = f" {self.range.describe()}" if self.range else ""
        reason = f" ({self.range.why})" if self.range and self.range.why else ""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (self.kind is int and isinstance(value, float)):
            return f"must be {what}{in_range}{reason}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be {what}{in_range}{reason}"
        if self.range and not self.range.admits(value):
            return f"must be{in_range}{reason}"
        return None


def _numeric(annotation: Any) -> tuple[type, bool] | None:
    """``(int|float, optional)`` for ``int``, ``float``, ``Optional[int]``...; None for anything else."""
    if annotation in (int, float):
        return annotation, False
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and rest[0] in (int, float):
            return rest[0], True
    return None


@functools.lru_cache(maxsize=None)
def _dataclass_fields(target: str) -> tuple[tuple[str, type, bool], ...]:
    """The numeric fields ``(name, kind, optional)`` of the dataclass ``target`` names (empty if none)."""
    from hydra.utils import get_class

    try:
        cls = get_class(target)
    except Exception:  # an unknown _target_ is verl's to report (layer 3)
        return ()
    if not dataclasses.is_dataclass(cls):
        return ()
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind = _numeric(hints.get(f.name))
        if kind is not None and not f.name.startswith("_"):
            out.append((f.name, *kind))
    return tuple(out)


@functools.lru_cache(maxsize=None)
def _plain_defaults(section: str) -> tuple[tuple[str, type, bool], ...]:
    """The numeric keys ``(name, kind, optional)`` of a plain-dict section, from verl's default YAML."""
    import verl

    file, node = PLAIN_DEFAULTS[section]
    loaded = OmegaConf.load(Path(verl.__file__).parent / "trainer" / "config" / file)
    defaults = loaded[node] if node else loaded
    out = []
    for name in defaults:
        value = defaults._get_node(name)._value()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append((str(name), type(value), False))
        elif value is None and (r := RANGES.get(f"{section}.{name}")) is not None and r.kind is not None:
            out.append((str(name), r.kind, True))
    return tuple(out)


def _nodes(node: DictConfig, path: str) -> Iterator[tuple[str, DictConfig]]:
    """``(path, node)`` of every mapping under ``node`` (itself first), skipping :data:`SKIPPED`."""
    yield path, node
    for key in node.keys():
        child = node._get_node(key)
        sub = f"{path}.{key}"
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            if str(key) in SKIPPED or sub in SKIPPED:
                continue
            yield from _nodes(child, sub)


def _entries(cfg: DictConfig, with_reference: bool = True) -> list[tuple[Setting, DictConfig, str]]:
    """``(setting, parent node, name)`` of every key of the table present in ``cfg`` (see :func:`settings`)."""
    table: dict[str, tuple[Setting, DictConfig, str]] = {}

    def add(parent: DictConfig, present: set, path: str, name: str, kind: type, optional: bool, source: str) -> None:
        if name in present:
            key = f"{path}.{name}"
            r = RANGES.get(key)
            table[key] = (Setting(key, kind, optional or bool(r and r.optional), r, source), parent, name)

    for section in SECTIONS:
        node = cfg.get(section)
        if not isinstance(node, DictConfig):
            continue
        for path, sub in _nodes(node, section):
            if not with_reference and (path == f"{AOR}.ref" or path.startswith(f"{AOR}.ref.")):
                continue
            present = set(sub.keys())  # keys() does not resolve values; `in` would
            if path in PLAIN_DEFAULTS:
                for name, kind, optional in _plain_defaults(path):
                    add(sub, present, path, name, kind, optional, f"verl's default of {path}.{name}")
            target = sub._get_node("_target_")._value() if "_target_" in present else None
            if isinstance(target, str):
                renamed = {v: k for k, v in REFERENCE_RENAMES.items()} if path == f"{AOR}.ref" else {}
                for field, kind, optional in _dataclass_fields(target):
                    name = renamed.get(field, field)
                    add(sub, present, path, name, kind, optional, f"{target.rsplit('.', 1)[-1]}.{field}")
    return list(table.values())


def settings(cfg: DictConfig, with_reference: bool = True) -> list[Setting]:
    """The table for ``cfg``: one :class:`Setting` per numeric key verl reads (see the module docstring).

    The ``_target_`` of each section is read from ``cfg`` itself (a megatron actor gets
    ``McoreActorConfig``'s fields). ``with_reference`` includes ``actor_rollout_ref.ref`` (under the
    names verl's worker renames, :data:`REFERENCE_RENAMES`); it is checked even when no reference model
    is used, as asking verl whether one is (``need_reference_policy``) imports pandas and datasets: 0.6 s
    on every refusal.
    """
    return [setting for setting, _, _ in _entries(cfg, with_reference)]


def check_table(cfg: DictConfig) -> None:
    """Every key of :func:`settings` has a value of its type and range; raises :class:`ConfigError`.

    Keys the user sets come first: a key whose value is an interpolation of another
    (``actor.rollout_n: ${...rollout.n}``) is checked after it, so the line names the key that was set.
    """
    from omegaconf.errors import OmegaConfBaseException

    entries = _entries(cfg)
    entries.sort(key=lambda e: e[1]._get_node(e[2])._is_interpolation())
    for setting, parent, name in entries:
        node = parent._get_node(name)
        if node._is_missing():  # '???': filled in by verl at run time
            continue
        try:
            value = parent[name]
        except OmegaConfBaseException as e:  # an interpolation that does not resolve
            raise ConfigError(f"{setting.key}: {' '.join(str(e).split())}") from e
        problem = setting.problem(value)
        if problem:
            source = f" (from {node._value()})" if node._is_interpolation() else ""
            raise ConfigError(f"{setting.key}={value!r}{source}: {problem}")


# ------------------------------------------------------------------------------------ rules between keys


def _get(cfg: DictConfig, key: str, default: Any = None) -> Any:
    return OmegaConf.select(cfg, key, default=default)


def mini_batch_within_batch(cfg: DictConfig) -> str | None:
    """verl updates the actor in mini-batches of ``ppo_mini_batch_size × rollout.n`` samples out of a batch
    of ``train_batch_size × rollout.n`` (``trainer_base._update_actor``): a larger mini-batch has nothing
    to fill it. verl's own check (``ActorConfig.validate``) is skipped with ``use_dynamic_bsz``."""
    mini, batch, n = _get(cfg, f"{ACTOR}.ppo_mini_batch_size"), _get(cfg, "data.train_batch_size"), _get(cfg, f"{ROLLOUT}.n")
    if mini > batch:
        return (
            f"{ACTOR}.ppo_mini_batch_size={mini} exceeds data.train_batch_size={batch}: verl updates the actor in "
            f"mini-batches of ppo_mini_batch_size x rollout.n = {mini * n} samples out of a batch of "
            f"train_batch_size x rollout.n = {batch * n}; set ppo_mini_batch_size <= {batch}"
        )
    return None


def world_fits_rollout(cfg: DictConfig) -> str | None:
    """The actor/rollout workers (``nnodes × n_gpus_per_node``) split into rollout replicas of
    ``tensor × data × pipeline`` parallel ranks; verl asserts the division inside the worker."""
    world = _get(cfg, "trainer.nnodes") * _get(cfg, "trainer.n_gpus_per_node")
    tp, dp, pp = (_get(cfg, f"{ROLLOUT}.{k}_parallel_size", 1) for k in ("tensor_model", "data", "pipeline_model"))
    if world % (tp * dp * pp):
        return (
            f"trainer.nnodes x trainer.n_gpus_per_node = {world} ranks is not divisible by {ROLLOUT}."
            f"tensor_model_parallel_size x data_parallel_size x pipeline_model_parallel_size = {tp} x {dp} x {pp}"
        )
    return None


def batch_divides_over_ranks(cfg: DictConfig) -> str | None:
    """Without dynamic batch sizes an FSDP run splits ``train_batch_size × rollout.n`` samples evenly over
    its ranks (``verl.utils.config.validate_config`` asserts it, as a traceback)."""
    if _get(cfg, f"{ACTOR}.use_dynamic_bsz") or _get(cfg, f"{ACTOR}.strategy") == "megatron":
        return None
    batch, n = _get(cfg, "data.train_batch_size"), _get(cfg, f"{ROLLOUT}.n")
    ranks = _get(cfg, "trainer.nnodes") * _get(cfg, "trainer.n_gpus_per_node")
    if (batch * n) % ranks:
        return (
            f"data.train_batch_size x {ROLLOUT}.n = {batch} x {n} = {batch * n} samples do not split evenly over "
            f"trainer.nnodes x trainer.n_gpus_per_node = {ranks} ranks"
        )
    return None


CROSS_RULES: tuple[Callable[[DictConfig], str | None], ...] = (
    mini_batch_within_batch,
    world_fits_rollout,
    batch_divides_over_ranks,
)


def check_cross_rules(cfg: DictConfig) -> None:
    """Every rule of :data:`CROSS_RULES` (run after :func:`check_table`: the values have their types)."""
    for rule in CROSS_RULES:
        problem = rule(cfg)
        if problem:
            raise ConfigError(problem)


# ------------------------------------------------------------------------------------ verl's own classes


def _uses_reference(cfg: DictConfig) -> bool:
    from verl.trainer.ppo.utils import need_reference_policy

    return bool(need_reference_policy(cfg))


def _reference_section(cfg: DictConfig) -> DictConfig:
    """``actor_rollout_ref.ref`` renamed as ``ActorRolloutRefWorker.init_model`` renames it before building it
    (:data:`REFERENCE_RENAMES`; the mini-batch is the actor's)."""
    from omegaconf import open_dict

    ref = OmegaConf.create(OmegaConf.to_container(_get(cfg, f"{AOR}.ref"), resolve=True))
    with open_dict(ref):
        ref.ppo_mini_batch_size = _get(cfg, f"{ACTOR}.ppo_mini_batch_size")
        for key, field in REFERENCE_RENAMES.items():
            ref[field] = ref.pop(key, False if field == "use_dynamic_bsz" else None)
    return ref


def _reworded(section: str, target: str | None, error: BaseException) -> ConfigError:
    """verl's error while building ``section``, as one line naming the key (the field it mentions)."""
    import re

    from hydra.utils import get_class

    root = error
    while root.__cause__ is not None or root.__context__ is not None:
        root = root.__cause__ or root.__context__
    message = " ".join(str(root).split()) or f"{type(root).__name__} in verl's {target or section} check"
    if section in message:
        return ConfigError(message)
    try:
        names = sorted((f.name for f in dataclasses.fields(get_class(target))), key=len, reverse=True)
    except Exception:  # no dataclass target: name the section
        names = []
    field = next((n for n in names if re.search(rf"\b{re.escape(n)}\b", message)), None)
    return ConfigError(f"{section}.{field}: {message}" if field else f"{section}: {message}")


def build_verl_configs(cfg: DictConfig) -> dict[str, Any]:
    """verl's config objects for the actor, the reference (if used), the rollout and the algorithm, built as
    verl's workers and trainer build them; raises :class:`ConfigError` naming the key on verl's errors."""
    from verl.utils.config import omega_conf_to_dataclass

    sections: dict[str, Any] = {ACTOR: _get(cfg, ACTOR), ROLLOUT: _get(cfg, ROLLOUT), "algorithm": _get(cfg, "algorithm")}
    if _uses_reference(cfg):
        sections[f"{AOR}.ref"] = _reference_section(cfg)
    built = {}
    for section, node in sections.items():
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        try:
            built[section] = omega_conf_to_dataclass(node)
        except Exception as e:  # hydra wraps verl's ValueError / AssertionError / TypeError
            raise _reworded(section, target, e) from e
    return built


def check_verl_settings(cfg: DictConfig) -> None:
    """The pre-flight of verl's own settings: the table, the rules between keys, verl's own classes."""
    check_table(cfg)
    check_cross_rules(cfg)
    build_verl_configs(cfg)
