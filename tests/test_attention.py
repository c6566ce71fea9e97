"""Attention without flash-attn (reweight/attention.py): sdpa is picked for a CUDA run, or the combinations verl
0.9.1 cannot run without flash-attn are refused naming their key, before Ray. flash-attn is faked absent or
present through ``sys.modules`` (this machine has none)."""

from __future__ import annotations

import copy
import importlib.machinery
import sys
import types

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import minimal_run_files
from reweight.attention import ATTN_KEY, check_attention, flash_attn_available
from reweight.checks import ConfigError
from reweight.train import _prepare_run, compose_config

MODEL = ["actor_rollout_ref.model.path=/models/any"]
PRESETS = ["qwen25_math_7b_dapo", "qwen25_math_7b_reweight", "qwen3_8b_base_dapo", "qwen3_8b_base_reweight"]
SP = "actor_rollout_ref.actor.fsdp_config.ulysses_sequence_parallel_size"


@pytest.fixture
def no_flash_attn(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # import flash_attn -> ImportError, find_spec -> None


@pytest.fixture
def fake_flash_attn(monkeypatch):
    module = types.ModuleType("flash_attn")
    module.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None)
    monkeypatch.setitem(sys.modules, "flash_attn", module)


@pytest.fixture(scope="module")
def composed():
    return compose_config("dapo_reweight", MODEL)


@pytest.fixture
def cuda_config(composed):
    """dapo_reweight (a CUDA config: vLLM rollout) with overrides applied as Hydra would (``+`` adds a key)."""

    def make(*overrides):
        cfg = copy.deepcopy(composed)
        for override in overrides:
            key, value = override.lstrip("+").split("=", 1)
            OmegaConf.update(cfg, key, yaml.safe_load(value), force_add=override.startswith("+"))
        return cfg

    return make


def test_flash_attn_detection_follows_the_import_system(no_flash_attn):
    assert not flash_attn_available()


def test_flash_attn_detection_sees_an_installed_module(fake_flash_attn):
    assert flash_attn_available()


def test_without_flash_attn_a_cuda_run_gets_sdpa_and_one_line_says_so(no_flash_attn, cuda_config):
    cfg = cuda_config()
    assert OmegaConf.select(cfg, ATTN_KEY) is None  # verl would default to flash_attention_2
    note = check_attention(cfg, cpu=False)
    assert OmegaConf.select(cfg, ATTN_KEY) == "sdpa"
    assert "\n" not in note and f"{ATTN_KEY}=sdpa" in note and "flash_attn is not importable" in note
    # verl's model config reads exactly this key, with flash_attention_2 as its default
    import inspect

    from verl.workers.config.model import HFModelConfig

    assert 'self.override_config.get("attn_implementation", "flash_attention_2")' in inspect.getsource(HFModelConfig)


def test_with_flash_attn_nothing_changes(fake_flash_attn, cuda_config):
    cfg = cuda_config(f"{SP}=2")
    assert check_attention(cfg, cpu=False) is None
    assert OmegaConf.select(cfg, ATTN_KEY) is None


def test_cpu_runs_and_an_explicit_sdpa_are_left_alone(no_flash_attn, cuda_config):
    cfg = cuda_config(f"+{ATTN_KEY}=eager", f"{SP}=2")
    assert check_attention(cfg, cpu=True) is None  # verl's CPU platform: no CUDA kernels to miss
    cfg = cuda_config(f"+{ATTN_KEY}=sdpa")
    assert check_attention(cfg, cpu=False) is None and OmegaConf.select(cfg, ATTN_KEY) == "sdpa"


@pytest.mark.parametrize("overrides, key", [
    ([f"+{ATTN_KEY}=flash_attention_2"], ATTN_KEY),
    ([f"+{ATTN_KEY}=flash_attention_3"], ATTN_KEY),
    ([f"{SP}=2"], SP),
    (["actor_rollout_ref.actor.ulysses_sequence_parallel_size=4"], "actor_rollout_ref.actor.ulysses_sequence_parallel_size"),
    # a reference model (KL loss) with its own sequence parallelism
    (["actor_rollout_ref.actor.use_kl_loss=true", "actor_rollout_ref.ref.fsdp_config.ulysses_sequence_parallel_size=2"],
     "actor_rollout_ref.ref.fsdp_config.ulysses_sequence_parallel_size"),
    (["actor_rollout_ref.actor.strategy=megatron"], "actor_rollout_ref.actor.strategy"),
])
def test_combinations_verl_cannot_run_without_flash_attn_are_refused_naming_the_key(no_flash_attn, overrides, key, cuda_config):
    cfg = cuda_config(*overrides)
    with pytest.raises(ConfigError) as error:
        check_attention(cfg, cpu=False)
    assert str(error.value).startswith(f"{key}=")
    assert "flash_attn is not importable" in str(error.value)


def test_a_reference_model_that_is_not_built_is_not_held_to_it(no_flash_attn, cuda_config):
    """DAPO builds no reference model (no KL): its SP setting applies to nothing."""
    cfg = cuda_config("actor_rollout_ref.ref.fsdp_config.ulysses_sequence_parallel_size=2")
    assert "sdpa" in check_attention(cfg, cpu=False)


def _local(tmp_path):
    # the data files and output dir of minimal_run_files (the pre-flight reads them); the preset's own hub model
    return [o for o in minimal_run_files(tmp_path) if not o.startswith("actor_rollout_ref.model.path=")]


@pytest.mark.parametrize("name", PRESETS)
def test_paper_presets_dry_run_without_flash_attn(no_flash_attn, tmp_path, capsys, name):
    """The presets use Ulysses SP (the authors' settings): refused without flash-attn, naming the key; with SP
    off they dry-run on sdpa (reweight-train --dry-run's own path, our checks and verl's validate_config)."""
    cfg = compose_config(name, _local(tmp_path))
    with pytest.raises(ConfigError, match=rf"^{SP}=(4|8):"):
        _prepare_run(copy.deepcopy(cfg), dry_run=True)
    OmegaConf.update(cfg, SP, 1)
    assert _prepare_run(cfg, dry_run=True) is None
    out = capsys.readouterr().out
    assert f"[reweight-train] flash_attn is not importable here: using PyTorch attention, {ATTN_KEY}=sdpa" in out
    assert "attn_implementation: sdpa" in out and "dry run: config checked" in out


def test_the_cli_refuses_with_one_line_and_exit_2(no_flash_attn, tmp_path, capsys, monkeypatch):
    from reweight.train import main

    monkeypatch.chdir(tmp_path)
    code = None
    try:
        code = main(["--config-name", "qwen3_8b_base_reweight", "--dry-run", *_local(tmp_path),
                     f"hydra.run.dir={tmp_path}"])
    except SystemExit as e:
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"reweight-train: error: {SP}=8:"), err
