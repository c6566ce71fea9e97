"""The values our docs state, asserted as the docs state them (hand-written here, not read from the code).

docs/fidelity.md's preset table, the study's documented arms and defaults (docs/study.md, docs/weights.md),
the README's plain-verl command line, and the embedded default's length. A change to any of them has to
change its doc and this file together.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from reweight.train import compose_config

ROOT = Path(__file__).resolve().parents[1]
AOR = "actor_rollout_ref"
A, R, PL = f"{AOR}.actor", f"{AOR}.rollout", f"{AOR}.actor.policy_loss"

# docs/fidelity.md, "Preset fields vs the authors' scripts": the same in both paper setups ...
PAPER_COMMON = {
    "data.max_prompt_length": 2048,
    "data.train_batch_size": 512,
    f"{R}.n": 16,
    f"{A}.ppo_mini_batch_size": 32,
    "algorithm.filter_groups.max_inflight_gen_batches": 3,
    "algorithm.filter_groups.enable": True,
    "algorithm.filter_groups.metric": "acc",
    "algorithm.adv_estimator": "grpo",
    "algorithm.use_kl_in_reward": False,
    f"{A}.use_kl_loss": False,
    f"{A}.clip_ratio_low": 0.2,
    f"{A}.clip_ratio_high": 0.28,
    f"{A}.clip_ratio_c": 10.0,
    f"{A}.loss_agg_mode": "token-mean",
    f"{A}.optim.lr": 1e-6,
    f"{A}.optim.lr_warmup_steps": 10,
    f"{A}.optim.weight_decay": 0.1,
    f"{A}.grad_clip": 1.0,
    f"{A}.entropy_coeff": 0,
    f"{R}.temperature": 1.0,
    f"{R}.top_p": 1.0,
    f"{R}.top_k": -1,
    f"{R}.val_kwargs.temperature": 1.0,
    f"{R}.val_kwargs.top_p": 0.7,
    f"{R}.val_kwargs.top_k": -1,
    f"{R}.val_kwargs.n": 1,
    f"{R}.val_kwargs.do_sample": True,
    "reward.reward_kwargs.overlong_buffer_cfg.enable": True,
    "reward.reward_kwargs.overlong_buffer_cfg.len": 4096,
    "reward.reward_kwargs.overlong_buffer_cfg.penalty_factor": 1.0,
    "reward.reward_manager.name": "dapo",
    f"{R}.tensor_model_parallel_size": 4,
    f"{A}.fsdp_config.param_offload": True,
    f"{A}.fsdp_config.optimizer_offload": True,
    f"{A}.fsdp_config.fsdp_size": -1,
    f"{AOR}.model.enable_gradient_checkpointing": True,
    f"{AOR}.nccl_timeout": 36000,
    f"{R}.gpu_memory_utilization": 0.8,
    f"{R}.enable_chunked_prefill": True,
    f"{A}.use_dynamic_bsz": True,
    f"{AOR}.model.use_remove_padding": True,
    f"{A}.checkpoint.save_contents": ["model", "optimizer", "extra", "hf_model"],
    "trainer.test_freq": 5,
    "trainer.save_freq": 10,
    "trainer.val_before_train": True,
    "trainer.resume_mode": "auto",
    "data.truncation": "error",
    "data.filter_overlong_prompts": True,
    "trainer.total_training_steps": 250,
    "trainer.total_epochs": 100,
    "seed": 1,
}
# ... and per setup: (Qwen2.5-Math-7B, Qwen3-8B-Base)
PAPER_SETUP = {
    "trainer.nnodes": (4, 8),
    "trainer.n_gpus_per_node": (8, 8),
    "data.max_response_length": (8192, 20480),
    f"{A}.fsdp_config.ulysses_sequence_parallel_size": (4, 8),
    f"{A}.ppo_max_token_len_per_gpu": (10240, 22528),
    f"{R}.log_prob_max_token_len_per_gpu": (10240, 22528),
    f"{R}.max_num_batched_tokens": (10240, 22528),
}
PAPER_ALPHA = {"qwen25_math_7b": 0.2, "qwen3_8b_base": 0.1}


@pytest.mark.parametrize("setup", ["qwen25_math_7b", "qwen3_8b_base"])
@pytest.mark.parametrize("method", ["reweight", "dapo"])
def test_the_paper_presets_have_the_values_docs_fidelity_md_lists(setup, method):
    cfg = compose_config(f"{setup}_{method}", [])
    i = 0 if setup == "qwen25_math_7b" else 1
    want = {**PAPER_COMMON, **{k: v[i] for k, v in PAPER_SETUP.items()}}
    got = {k: OmegaConf.select(cfg, k, default="<missing>") for k in want}
    got = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in got.items()}
    wrong = {k: (got[k], v) for k, v in want.items() if got[k] != v or isinstance(got[k], bool) != isinstance(v, bool)}
    assert not wrong, wrong  # key: (preset, docs)
    if method == "reweight":
        assert (OmegaConf.select(cfg, f"{PL}.scheme"), OmegaConf.select(cfg, f"{PL}.alpha")) == ("low_prob", PAPER_ALPHA[setup])


# docs/study.md ("Arms") and docs/weights.md ("In the study"): what each documented arm trains with.
DOCUMENTED_ARMS = {
    "default": {
        "dapo": dict(scheme="none"),
        "low_prob_0.2": dict(scheme="low_prob", alpha=0.2),
        "dominate_0.2": dict(scheme="dominate", alpha=0.2),
        "low_prob_unit": dict(scheme="low_prob", alpha=0.2, unit_mean=True),
    },
    "literature": {
        "dapo": dict(scheme="none"),
        "low_prob": dict(scheme="low_prob", alpha=0.2),
        "dominate": dict(scheme="dominate", alpha=0.2),
        "middle": dict(scheme="middle", alpha=0.2),
        "normalize": dict(scheme="normalize", alpha=0.2),
        "low_prob_positive": dict(scheme="low_prob", alpha=0.2, apply_to="positive"),
        "low_prob_negative": dict(scheme="low_prob", alpha=0.2, apply_to="negative"),
        "low_prob_unit": dict(scheme="low_prob", alpha=0.2, unit_mean=True),
        "forking_0.2": dict(scheme="forking", alpha=0.2),
        "entropy_bonus": dict(scheme="entropy_bonus", alpha=0.4, kappa=2.0),
    },
}


@pytest.mark.parametrize("preset", list(DOCUMENTED_ARMS))
def test_the_study_arms_train_with_the_documented_loss_settings(preset):
    """Each arm's overrides composed on the embedded config and built as verl's workers build the loss config."""
    from verl.utils.config import omega_conf_to_dataclass

    from reweight.study.spec import ARM_PRESETS

    assert list(ARM_PRESETS[preset]) == list(DOCUMENTED_ARMS[preset])
    defaults = dict(alpha=0.2, apply_to="all", unit_mean=False, kappa=2.0, prob_source="old")
    for arm, settings in DOCUMENTED_ARMS[preset].items():
        loss = omega_conf_to_dataclass(compose_config("embedded", ARM_PRESETS[preset][arm]).actor_rollout_ref.actor.policy_loss)
        want = {**defaults, **settings}
        assert {k: getattr(loss, k) for k in want} == want, arm
        assert loss.loss_mode == "reweight"


def test_the_study_defaults_are_the_documented_ones():
    """docs/study.md: 4 arms x 9 seeds x 10 steps, n = 16, analysis 64 prompts, decoding 32 prompts at top-p 0.7,
    extrapolation at τ = -0.3; --jobs 2 for the embedded config on a machine without a GPU."""
    from reweight.study.cli import default_jobs
    from reweight.study.spec import StudySpec

    spec = StudySpec()
    assert (spec.config_name, list(spec.arms), spec.seeds, spec.train_steps) == (
        "embedded", list(DOCUMENTED_ARMS["default"]), list(range(1, 10)), 10)
    assert (spec.n, spec.analysis_prompts, spec.decode_prompts, spec.decode_top_p, spec.extrapolate_tau) == (16, 64, 32, 0.7, -0.3)
    if not torch.cuda.is_available():
        assert default_jobs("local", "embedded") == 2


def test_the_readme_command_line_for_plain_verl_builds_our_loss():
    """README "The loss in verl": verl's own trainer config (not ours) with the four overrides gives our config
    class, scheme and alpha, and the loss is registered under that loss_mode."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from verl.trainer.ppo.core_algos import get_policy_loss_fn
    from verl.utils.config import omega_conf_to_dataclass

    from reweight.loss import ReweightPolicyLossConfig, compute_policy_loss_reweight

    overrides = [f"{PL}._target_=reweight.loss.ReweightPolicyLossConfig", f"{PL}.loss_mode=reweight",
                 f"+{PL}.scheme=low_prob", f"+{PL}.alpha=0.2"]  # fmt: skip
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("verl.trainer.config", version_base=None):
            cfg = compose("ppo_trainer", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()
    loss = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor.policy_loss)
    assert isinstance(loss, ReweightPolicyLossConfig) and (loss.scheme, loss.alpha) == ("low_prob", 0.2)
    assert get_policy_loss_fn("reweight") is compute_policy_loss_reweight


def test_the_embedded_default_trains_20_steps():
    """README "Train": reweight-train with no arguments trains for 20 steps, without torch.compile (docs/study.md)."""
    cfg = compose_config("embedded", [])
    assert cfg.trainer.total_training_steps == 20
    assert cfg.actor_rollout_ref.actor.use_torch_compile is False


def test_the_gpu_checks_script_parses():
    """launch/gpu_checks.sh, the one GPU validation path (docs/gpu.md), is at least valid bash."""
    out = subprocess.run(["bash", "-n", str(ROOT / "launch" / "gpu_checks.sh")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
