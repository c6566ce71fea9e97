"""The pre-flight of verl's own settings (reweight/preflight.py): every numeric key verl reads, refused
in one line naming the key, exit status 2, before Ray.

The fuzz runs the refusal in-process on one composed config (each key set, checked, restored), through
``reweight.cli_errors.run_cli`` as every console script does, so hundreds of cases take seconds; a few
cases run ``reweight-train`` itself (in-process, and one real console script).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from reweight import preflight
from reweight.checks import ConfigError
from reweight.cli_errors import run_cli
from reweight.train import PROG, compose_config

AOR = "actor_rollout_ref"

# The issue's table: each override, and what the one line must say (an independent, hand-written expectation).
ISSUE_OVERRIDES = [
    ("data.train_batch_size=0", "data.train_batch_size=0: must be >= 1"),
    (f"{AOR}.rollout.n=0", f"{AOR}.rollout.n=0: must be >= 1"),
    ("data.max_response_length=-5", "data.max_response_length=-5: must be >= 1"),
    (f"{AOR}.actor.ppo_mini_batch_size=0", f"{AOR}.actor.ppo_mini_batch_size=0: must be >= 1"),
    (f"{AOR}.actor.optim.lr=abc", f"{AOR}.actor.optim.lr='abc': must be a finite number >= 0"),
    (f"{AOR}.rollout.temperature=-1", f"{AOR}.rollout.temperature=-1: must be > 0"),
    (f"{AOR}.actor.clip_ratio_low=-0.2", f"{AOR}.actor.clip_ratio_low=-0.2: must be >= 0"),
    (f"{AOR}.rollout.gpu_memory_utilization=1.5", f"{AOR}.rollout.gpu_memory_utilization=1.5: must be > 0 and <= 1"),
]

# Values at the edge of a range, or special values verl documents, that must still pass every layer.
VALID_EDGES = [
    f"{AOR}.rollout.val_kwargs.temperature=0",  # greedy validation
    f"{AOR}.actor.clip_ratio_low=0",
    f"{AOR}.actor.clip_ratio_high=0",
    f"{AOR}.rollout.gpu_memory_utilization=1.0",
    f"{AOR}.rollout.top_p=1.0",
    f"{AOR}.rollout.top_k=-1",
    f"{AOR}.actor.optim.lr=0",
    f"{AOR}.actor.optim.lr=1",  # an int for a float key
    f"{AOR}.actor.ppo_mini_batch_size=8",  # = data.train_batch_size of the embedded config
    "data.train_max_samples=-1",
    "trainer.total_training_steps=null",
    "algorithm.gamma=1",
    f"{AOR}.actor.entropy_coeff=-0.001",  # no range: any finite number
]

CROSS_KEY_CASES = [
    ([f"{AOR}.actor.ppo_mini_batch_size=9"], f"{AOR}.actor.ppo_mini_batch_size=9 exceeds data.train_batch_size=8"),
    ([f"{AOR}.rollout.tensor_model_parallel_size=4"], "trainer.nnodes x trainer.n_gpus_per_node = 2 ranks is not divisible"),
    (["data.train_batch_size=3", f"{AOR}.actor.ppo_mini_batch_size=3", f"{AOR}.rollout.n=1", f"{AOR}.actor.use_dynamic_bsz=false",
      f"{AOR}.rollout.tensor_model_parallel_size=1"], "data.train_batch_size x actor_rollout_ref.rollout.n = 3 x 1 = 3"),
    # verl's own class (FSDPActorConfig.__post_init__) refuses it; the line names the key
    ([f"{AOR}.actor.loss_agg_mode=token-median"], f"{AOR}.actor.loss_agg_mode: Invalid loss_agg_mode: token-median"),
]


@pytest.fixture(scope="module")
def cfg() -> DictConfig:
    return compose_config("embedded", [])


def _parse(override: str) -> tuple[str, object]:
    """``key=value`` as Hydra parses it on the command line (``nan``, ``inf``, ``abc``, ``null``...)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([override])[0]
    return parsed.key_or_group.lstrip("+"), parsed.value()


class _Set:
    """Set keys of ``cfg`` for the duration of a ``with`` (the raw values, interpolations too, restored)."""

    def __init__(self, cfg: DictConfig, items: list[tuple[str, object]]):
        self.cfg, self.items, self.saved = cfg, items, []

    def __enter__(self):
        from omegaconf import open_dict

        for key, value in self.items:
            parent, _, name = key.rpartition(".")
            node = OmegaConf.select(self.cfg, parent)
            had = name in node
            self.saved.append((node, name, node._get_node(name)._value() if had else None, had))
            with open_dict(node):
                node[name] = value
        return self.cfg

    def __exit__(self, *exc):
        from omegaconf import open_dict

        for node, name, raw, had in reversed(self.saved):
            with open_dict(node):
                if had:
                    node[name] = raw
                else:
                    del node[name]
        return False


def _refusal(cfg, items, capsys) -> tuple[int, list[str]]:
    """``run_cli`` over the pre-flight with ``items`` set: the exit status and the stderr lines."""
    with _Set(cfg, items):
        code = run_cli(PROG, lambda: preflight.check_verl_settings(cfg))
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def _bad_values(setting: preflight.Setting) -> list[object]:
    """The bad values of the issue's fuzz for one key: a string, NaN, ±inf, a fraction for an integer, and
    0 / a negative / above the top / null where the key's range or type refuses them."""
    values: list[object] = ["abc", float("nan"), float("inf"), float("-inf")]
    if setting.kind is int:
        values.append(1.5)
    r = setting.range
    if r is not None:
        for v in (0, -3):
            if not r.admits(v):
                values.append(v)
        if r.high is not None:
            values.append(r.high + 1)
    if not setting.optional:
        values.append(None)
    return values


def test_the_table_is_derived_from_verls_classes_and_defaults(cfg):
    table = {s.key: s for s in preflight.settings(cfg)}
    assert len(table) >= 100  # every numeric key of the actor, rollout, algorithm, data and trainer sections
    # types as verl's dataclass annotations and defaults have them
    from verl.workers.config import FSDPActorConfig, FSDPOptimizerConfig, RolloutConfig

    for key, cls, name in [(f"{AOR}.actor.ppo_mini_batch_size", FSDPActorConfig, "ppo_mini_batch_size"),
                           (f"{AOR}.actor.clip_ratio_low", FSDPActorConfig, "clip_ratio_low"),
                           (f"{AOR}.actor.optim.lr", FSDPOptimizerConfig, "lr"),
                           (f"{AOR}.rollout.gpu_memory_utilization", RolloutConfig, "gpu_memory_utilization")]:
        assert table[key].kind is type(getattr(cls, name)), key  # the class default's type
    assert table["data.train_batch_size"].kind is int and table["trainer.total_epochs"].kind is int
    assert table[f"{AOR}.rollout.max_model_len"].optional  # Optional[int] in RolloutConfig
    assert not table[f"{AOR}.rollout.n"].optional
    # no profiler keys, no model loading
    assert not any(".profiler." in k or k.startswith(f"{AOR}.model.") for k in table)
    # every range applies to a key of the table (repetition_penalty only when added with '+')
    assert set(preflight.RANGES) - set(table) == {f"{AOR}.rollout.repetition_penalty"}
    # the reference's keys under the names the config has, not the ones verl's worker renames them to
    assert f"{AOR}.ref.log_prob_micro_batch_size_per_gpu" in table and f"{AOR}.ref.ppo_micro_batch_size_per_gpu" not in table
    without_ref = {s.key for s in preflight.settings(cfg, with_reference=False)}
    assert not any(k.startswith(f"{AOR}.ref.") for k in without_ref) and without_ref < set(table)


def test_every_key_of_the_table_refuses_its_bad_values_in_one_line(cfg, capsys, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("ray.init on bad input"))
    failures, cases = [], 0
    for setting in preflight.settings(cfg):
        for value in _bad_values(setting):
            cases += 1
            code, lines = _refusal(cfg, [(setting.key, value)], capsys)
            ok = code == 2 and len(lines) == 1 and lines[0].startswith(f"{PROG}: error: {setting.key}=")
            if not ok or "Traceback" in lines[0]:
                failures.append((setting.key, value, code, lines))
    assert cases >= 500
    assert not failures, failures[:10]
    assert not ray.is_initialized()


# The fuzz's second source of cases, independent of preflight.RANGES: every numeric key that has a valid range,
# written from verl 0.9.1's dataclasses and docs (what the value means), as "low..high" with "(" / ")" for an
# open end and "|-1" where -1 is a documented special value. A key whose range preflight.RANGES forgot still
# gets its bad values here; a key that leaves verl's table fails the count below.
A, R, REF, OPT = f"{AOR}.actor", f"{AOR}.rollout", f"{AOR}.ref", f"{AOR}.actor.optim"
FSDP = ("fsdp_config.fsdp_size", "1..|-1"), ("fsdp_config.ulysses_sequence_parallel_size", "1.."), \
    ("fsdp_config.entropy_from_logits_chunk_size", "1..")  # fmt: skip
VERL_RANGES = {
    # data (verl/trainer/config/data/legacy_data.yaml)
    "data.train_batch_size": "1..", "data.gen_batch_size": "1..", "data.max_prompt_length": "1..",
    "data.max_response_length": "1..", "data.train_max_samples": "1..|-1", "data.val_max_samples": "1..|-1",
    "data.dataloader_num_workers": "0..", "data.filter_overlong_prompts_workers": "1..", "data.image_patch_size": "1..",
    # trainer (ppo_trainer.yaml)
    "trainer.nnodes": "1..", "trainer.n_gpus_per_node": "1..", "trainer.total_epochs": "1..",
    "trainer.total_training_steps": "1..", "trainer.critic_warmup": "0..", "trainer.log_val_generations": "0..",
    "trainer.ray_wait_register_center_timeout": "(0..", "trainer.esi_redundant_time": "0..",
    # actor (FSDPActorConfig / ActorConfig)
    f"{A}.ppo_mini_batch_size": "1..", f"{A}.ppo_micro_batch_size": "1..", f"{A}.ppo_micro_batch_size_per_gpu": "1..",
    f"{A}.ppo_max_token_len_per_gpu": "1..", f"{A}.ppo_epochs": "1..", f"{A}.clip_ratio": "0..",
    f"{A}.clip_ratio_low": "0..", f"{A}.clip_ratio_high": "0..", f"{A}.clip_ratio_c": "(1..", f"{A}.kl_loss_coef": "0..",
    f"{A}.grad_clip": "(0..", f"{A}.ulysses_sequence_parallel_size": "1..", f"{A}.loss_scale_factor": "1..",
    f"{A}.entropy_from_logits_chunk_size": "1..", **{f"{A}.{k}": v for k, v in FSDP},
    # optimizer (FSDPOptimizerConfig)
    f"{OPT}.lr": "0..", f"{OPT}.weight_decay": "0..", f"{OPT}.lr_warmup_steps_ratio": "0..1", f"{OPT}.min_lr_ratio": "0..1",
    f"{OPT}.clip_grad": "(0..",
    # reference (its log-prob pass; FSDP settings as the actor's)
    f"{REF}.log_prob_micro_batch_size": "1..", f"{REF}.log_prob_micro_batch_size_per_gpu": "1..",
    f"{REF}.log_prob_max_token_len_per_gpu": "1..", f"{REF}.ulysses_sequence_parallel_size": "1..",
    f"{REF}.entropy_from_logits_chunk_size": "1..", **{f"{REF}.{k}": v for k, v in FSDP},
    # rollout (RolloutConfig, SamplingConfig, AgentLoopConfig, MultiTurnConfig, CheckpointEngineConfig)
    f"{R}.n": "1..", f"{R}.temperature": "(0..", f"{R}.top_p": "(0..1", f"{R}.top_k": "0..|-1", f"{R}.prompt_length": "1..",
    f"{R}.response_length": "1..", f"{R}.gpu_memory_utilization": "(0..1", f"{R}.tensor_model_parallel_size": "1..",
    f"{R}.data_parallel_size": "1..", f"{R}.pipeline_model_parallel_size": "1..", f"{R}.expert_parallel_size": "1..",
    f"{R}.max_num_batched_tokens": "1..", f"{R}.max_num_seqs": "1..", f"{R}.max_model_len": "1..",
    f"{R}.log_prob_micro_batch_size": "1..", f"{R}.log_prob_micro_batch_size_per_gpu": "1..",
    f"{R}.log_prob_max_token_len_per_gpu": "1..", f"{R}.over_sample_rate": "0..", f"{R}.val_kwargs.temperature": "0..",
    f"{R}.val_kwargs.top_p": "(0..1", f"{R}.val_kwargs.top_k": "0..|-1", f"{R}.val_kwargs.n": "1..",
    f"{R}.agent.num_workers": "1..", f"{R}.multi_turn.max_parallel_calls": "1..",
    f"{R}.checkpoint_engine.update_weights_bucket_megabytes": "1..",
    # algorithm (AlgoConfig, KLControlConfig, FilterGroupsConfig)
    "algorithm.gamma": "0..1", "algorithm.lam": "0..1", "algorithm.kl_ctrl.kl_coef": "0..", "algorithm.kl_ctrl.horizon": "1..",
    "algorithm.kl_ctrl.target_kl": "0..", "algorithm.filter_groups.max_inflight_gen_batches": "1..",
}
# The embedded default's table (docs/architecture.md): its numeric keys, and how many of them have a range.
TABLE_KEYS, RANGED_KEYS = 119, len(VERL_RANGES)


def _outside(spec: str) -> list[float]:
    """Values just outside a ``VERL_RANGES`` spec, and a far one on each bounded side."""
    spec, _, special = spec.partition("|")
    low, high = spec.split("..")
    out = []
    if low:
        lo = float(low.lstrip("("))
        out += [lo, lo - 1] if low.startswith("(") else [lo - 1, lo - 100]
    if high:
        out += [float(high) + 0.5, float(high) + 100]
    return [v for v in out if not special or v != float(special)]


def test_every_key_with_a_range_in_verl_refuses_the_values_outside_it(cfg, capsys):
    """Bad values from the hand-written VERL_RANGES (not from preflight.RANGES), and the table's size pinned."""
    table = {s.key: s for s in preflight.settings(cfg)}
    assert len(table) == TABLE_KEYS
    assert sum(1 for s in table.values() if s.range is not None) == RANGED_KEYS
    assert set(VERL_RANGES) <= set(table), sorted(set(VERL_RANGES) - set(table))
    failures = []
    for key, spec in VERL_RANGES.items():
        for value in _outside(spec):
            value = int(value) if table[key].kind is int and value == int(value) else value
            code, lines = _refusal(cfg, [(key, value)], capsys)
            if not (code == 2 and len(lines) == 1 and lines[0].startswith(f"{PROG}: error: {key}={value!r}")):
                failures.append((key, value, code, lines))
    assert not failures, failures[:10]


@pytest.mark.parametrize("override, message", ISSUE_OVERRIDES, ids=[o.split("=")[0].rsplit(".", 1)[-1] for o, _ in ISSUE_OVERRIDES])
def test_the_issue_overrides_are_refused_naming_the_key(cfg, capsys, override, message):
    code, lines = _refusal(cfg, [_parse(override)], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"{PROG}: error: {message}"), lines[0]


def test_non_finite_values_as_hydra_parses_them(cfg, capsys):
    for override in (f"{AOR}.actor.optim.lr=nan", f"{AOR}.actor.optim.lr=inf", f"{AOR}.actor.kl_loss_coef=-inf"):
        key, value = _parse(override)
        assert isinstance(value, float) and not math.isfinite(value)
        code, lines = _refusal(cfg, [(key, value)], capsys)
        assert code == 2 and len(lines) == 1, lines
        assert lines[0].startswith(f"{PROG}: error: {key}={value!r}: must be a finite number >= 0"), lines[0]


@pytest.mark.parametrize("override", VALID_EDGES)
def test_valid_edge_values_pass_every_layer(cfg, override):
    with _Set(cfg, [_parse(override)]):
        preflight.check_verl_settings(cfg)


@pytest.mark.parametrize("overrides, message", CROSS_KEY_CASES, ids=["mini-batch", "rollout-tp", "ranks", "verl-class"])
def test_rules_between_keys_and_verls_own_classes(cfg, capsys, overrides, message):
    code, lines = _refusal(cfg, [_parse(o) for o in overrides], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"{PROG}: error: {message}"), lines[0]


def test_a_key_added_with_plus_is_checked_too(cfg, capsys):
    code, lines = _refusal(cfg, [_parse(f"+{AOR}.rollout.repetition_penalty=0")], capsys)
    assert code == 2 and lines == [f"{PROG}: error: {AOR}.rollout.repetition_penalty=0: must be > 0"]


def test_a_reference_model_is_built_as_verls_worker_renames_it(cfg):
    """With a KL loss verl builds the reference's FSDPActorConfig from ``ref`` renamed (log_prob_* ->
    ppo_*): the pre-flight builds it the same way, and refuses a bad reference micro-batch by name."""
    with _Set(cfg, [(f"{AOR}.actor.use_kl_loss", True)]):
        built = preflight.build_verl_configs(cfg)
        ref = built[f"{AOR}.ref"]
        assert ref.ppo_mini_batch_size == cfg.actor_rollout_ref.actor.ppo_mini_batch_size
        assert ref.ppo_micro_batch_size_per_gpu == cfg.actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu
        with _Set(cfg, [(f"{AOR}.ref.log_prob_micro_batch_size_per_gpu", 0)]), pytest.raises(ConfigError) as e:
            preflight.check_verl_settings(cfg)
        assert str(e.value).startswith(f"{AOR}.ref.log_prob_micro_batch_size_per_gpu=0")


# ------------------------------------------------------------------------------ through reweight-train


def test_reweight_train_main_refuses_before_ray(tmp_path, capsys, monkeypatch):
    """``reweight-train`` itself (in-process, not a dry run): refused in the driver, nothing started."""
    import ray

    import reweight.embedded

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("ray.init on bad input"))
    monkeypatch.setattr(reweight.embedded, "ensure_built", lambda *a, **k: pytest.fail("built the embedded assets"))
    from reweight.train import main

    with pytest.raises(SystemExit) as e:
        main([f"{AOR}.rollout.gpu_memory_utilization=1.5"])
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"{PROG}: error: {AOR}.rollout.gpu_memory_utilization=1.5: must be > 0 and <= 1 (a fraction of each GPU's memory)"]
    # no checkpoint directory, log or metrics file (Hydra's own outputs/ directory aside)
    assert not [p for p in tmp_path.rglob("*") if not p.is_relative_to(tmp_path / "outputs")]


def test_console_script_refuses_a_bad_verl_value_in_one_line(tmp_path):
    """The real ``reweight-train`` (a training run, not a dry run): exit 2, one line, no Ray session."""
    script = shutil.which("reweight-train", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    assert script is not None, "reweight-train is not installed as a console script (pyproject.toml [project.scripts])"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "RAY_TMPDIR": str(tmp_path / "ray")}
    env.pop("REWEIGHT_DEBUG", None)
    t0 = time.monotonic()
    out = subprocess.run([script, "data.train_batch_size=0"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - t0
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [f"{PROG}: error: data.train_batch_size=0: must be >= 1 "
                                               "(prompts per training step; 0 divides by zero in verl's dataloader)"]
    assert not (tmp_path / "ray").exists()  # Ray never started a session
    print(f"reweight-train data.train_batch_size=0 refused in {elapsed:.1f} s")
