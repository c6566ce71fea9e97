"""Every config composes from the package, passes verl's validation and our checks; bad input is refused early."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils.config import omega_conf_to_dataclass, validate_config

from conftest import minimal_run_files
from reweight.checks import ConfigError, check_config
from reweight.loss import ReweightPolicyLossConfig
from reweight.train import compose_config, prepare

ROOT = Path(__file__).resolve().parents[1]
PRIMARY_CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
MODEL = ["actor_rollout_ref.model.path=/models/any"]


def _local_run(tmp_path) -> list[str]:
    """Overrides naming a model dir, data files and an output dir that exist (reweight-train checks them)."""
    return minimal_run_files(tmp_path)  # the pre-flight reads them: empty files are refused


def test_the_expected_presets_exist():
    for name in ["dapo", "dapo_reweight", "qwen25_math_7b_dapo", "qwen25_math_7b_reweight",
                 "qwen3_8b_base_dapo", "qwen3_8b_base_reweight"]:
        assert name in PRIMARY_CONFIGS


@pytest.mark.parametrize("name", PRIMARY_CONFIGS)
def test_config_composes_and_passes_verl_validation(name):
    cfg = compose_config(name, MODEL if name in ("dapo", "dapo_reweight") else [])
    check_config(cfg)
    validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    # DAPO's defining settings, as verl will read them.
    assert cfg.algorithm.adv_estimator == "grpo"
    assert cfg.algorithm.filter_groups.enable and cfg.algorithm.filter_groups.metric == "acc"
    actor = cfg.actor_rollout_ref.actor
    assert (actor.clip_ratio_low, actor.clip_ratio_high, actor.clip_ratio_c) == (0.2, 0.28, 10.0)
    assert actor.loss_agg_mode == "token-mean" and not actor.use_kl_loss and actor.entropy_coeff == 0
    assert not cfg.algorithm.use_kl_in_reward
    assert cfg.reward.reward_manager.name == "dapo"
    assert cfg.reward.reward_kwargs.overlong_buffer_cfg.enable
    # our own section (verl never reads it, and its validation above accepts it): the direction monitor
    assert cfg.reweight.monitor.freq == 10
    assert cfg.reweight.paired_refills is False  # verl's own sampler unless asked (the study's paired sampling)


@pytest.mark.parametrize(
    "name,alpha,model,nodes,resp",
    [
        ("qwen25_math_7b_reweight", 0.2, "Qwen/Qwen2.5-Math-7B", 4, 8192),
        ("qwen3_8b_base_reweight", 0.1, "Qwen/Qwen3-8B-Base", 8, 20480),
    ],
)
def test_paper_presets(name, alpha, model, nodes, resp):
    cfg = compose_config(name)
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)  # as verl's workers build it
    assert isinstance(actor.policy_loss, ReweightPolicyLossConfig)
    assert (actor.policy_loss.scheme, actor.policy_loss.alpha, actor.policy_loss.prob_source) == ("low_prob", alpha, "old")
    assert cfg.actor_rollout_ref.model.path == model
    assert (cfg.trainer.nnodes, cfg.trainer.n_gpus_per_node) == (nodes, 8)
    assert cfg.data.max_response_length == resp
    assert cfg.reward.reward_kwargs.max_resp_len == resp
    baseline = compose_config(name.replace("_reweight", "_dapo"))
    assert baseline.actor_rollout_ref.actor.policy_loss.loss_mode == "vanilla"


# The authors' released scripts (run_7B.sh, run_8B.sh): sp_size, gen_tp, offload, nccl_timeout, token caps
# = max_prompt_length + max_response_length, test_freq / save_freq, gradient checkpointing.
AUTHORS_SYSTEMS = {"qwen25_math_7b": dict(sp=4, tp=4, tokens=2048 + 1024 * 8),
                   "qwen3_8b_base": dict(sp=8, tp=4, tokens=2048 + 1024 * 20)}


@pytest.mark.parametrize("name", ["qwen25_math_7b_dapo", "qwen25_math_7b_reweight",
                                  "qwen3_8b_base_dapo", "qwen3_8b_base_reweight"])
def test_paper_presets_use_the_authors_systems_settings(name):
    want = AUTHORS_SYSTEMS[name.rsplit("_", 1)[0]]
    cfg = compose_config(name)
    prepare(cfg, dry_run=True, local_paths=False)  # reweight-train --dry-run (data lives on the cluster): our checks and verl's validate_config
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)  # as verl's workers build them
    rollout = omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
    assert actor.fsdp_config.ulysses_sequence_parallel_size == want["sp"]
    assert actor.fsdp_config.param_offload and actor.fsdp_config.optimizer_offload
    assert actor.fsdp_config.fsdp_size == -1
    assert rollout.tensor_model_parallel_size == want["tp"]
    assert cfg.data.max_prompt_length + cfg.data.max_response_length == want["tokens"]
    assert actor.ppo_max_token_len_per_gpu == rollout.log_prob_max_token_len_per_gpu == want["tokens"]
    assert rollout.max_num_batched_tokens == want["tokens"] and rollout.enable_chunked_prefill
    assert rollout.gpu_memory_utilization == 0.8
    assert cfg.actor_rollout_ref.nccl_timeout == 36000
    assert cfg.actor_rollout_ref.model.enable_gradient_checkpointing
    assert "hf_model" in actor.checkpoint.save_contents
    assert (cfg.trainer.test_freq, cfg.trainer.save_freq, cfg.trainer.val_before_train) == (5, 10, True)


def test_overrides_reach_our_config_class():
    cfg = compose_config("dapo_reweight", MODEL + [
        "actor_rollout_ref.actor.policy_loss.scheme=focal", "actor_rollout_ref.actor.policy_loss.alpha=2"])
    pl = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor.policy_loss)
    assert (pl.scheme, pl.alpha) == ("focal", 2.0)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["+reward_model.reward_manager=dapo"], r"reward_model\.reward_manager.*reward\.reward_manager\.name"),
        (["reward_model.reward_manager=dapo"], r"reward_model\.reward_manager"),
        (["+reward_model.overlong_buffer.enable=true"], r"reward_model\.overlong_buffer.*overlong_buffer_cfg"),
        (["custom_reward_function.path=/x.py"], r"custom_reward_function\.path.*reward\.custom_reward_function\.path"),
        (["actor_rollout_ref.actor.policy_loss.alpha=-1"], r"policy_loss\.alpha"),
        (["actor_rollout_ref.actor.policy_loss.alpha=nan"], r"policy_loss\.alpha"),
        (["actor_rollout_ref.actor.policy_loss.alpha=inf"], r"policy_loss\.alpha"),
        (["actor_rollout_ref.actor.policy_loss.scheme=bogus"], r"policy_loss\.scheme"),
        (["actor_rollout_ref.actor.policy_loss.prob_source=ref"], r"policy_loss\.prob_source"),
        (["actor_rollout_ref.actor.policy_loss.loss_mode=vanilla"], r"policy_loss\.loss_mode"),
        (["reweight.monitor.freq=-1"], r"reweight\.monitor\.freq=-1"),
        (["reweight.monitor.freq=0.5"], r"reweight\.monitor\.freq=0\.5"),
        (["actor_rollout_ref.model.lora_rank=8"], r"reweight\.monitor\.freq=10 with LoRA"),
        (["reweight.paired_refills=maybe"], r"reweight\.paired_refills='maybe': must be true or false"),
        (["reweight.paired_refills=true", "trainer.v1.trainer_mode=colocate_async"],
         r"reweight\.paired_refills=true needs trainer\.v1\.trainer_mode=sync, got 'colocate_async'"),
        (["reweight.paired_refills=true", "trainer.v1.sampler.custom_sampler.path=/x.py",
          "trainer.v1.sampler.custom_sampler.name=Mine"], r"reweight\.paired_refills=true with .*custom_sampler\.name='Mine'"),
    ],
)
def test_bad_input_refused_before_ray_naming_the_key(overrides, match):
    cfg = compose_config("dapo_reweight", MODEL + overrides)
    with pytest.raises(ConfigError, match=match):
        prepare(cfg, dry_run=True)


def test_reweight_loss_mode_without_our_target_refused():
    cfg = compose_config("dapo", MODEL + ["actor_rollout_ref.actor.policy_loss.loss_mode=reweight"])
    with pytest.raises(ConfigError, match=r"_target_=reweight\.loss\.ReweightPolicyLossConfig"):
        check_config(cfg)


def test_unregistered_loss_mode_refused():
    cfg = compose_config("dapo", MODEL + ["actor_rollout_ref.actor.policy_loss.loss_mode=no_such_loss"])
    with pytest.raises(ConfigError, match="not a registered verl policy loss"):
        check_config(cfg)


def test_dry_run_cli_prints_resolved_config_and_does_not_start_ray(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "reweight.train", "--config-name", "dapo_reweight", "--dry-run", *_local_run(tmp_path),
         "actor_rollout_ref.actor.policy_loss.alpha=0.15", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "alpha: 0.15" in out.stdout and "dry run" in out.stdout
    assert "ray init kwargs" not in out.stdout


def test_cli_bad_input_exits_nonzero_with_the_key(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "reweight.train", "--config-name", "dapo_reweight", "--dry-run", *MODEL,
         "+reward_model.reward_manager=dapo", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 2, out.stderr[-3000:]
    (line,) = out.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith("reweight-train: error: 'reward_model.reward_manager' is a legacy verl key"), line
    assert "reward.reward_manager.name" in line  # the key to use instead


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, namespace="test_configs")
    yield ray
    ray.shutdown()


def _registered_losses_task(ray):
    """A Ray task (defined locally so Ray ships it by value, not by this test module's name)."""

    def registered_losses():
        import os

        from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY

        return os.getpid(), os.environ.get("VERL_USE_EXTERNAL_PLUGINS"), sorted(POLICY_LOSS_REGISTRY)

    return ray.remote(num_cpus=1)(registered_losses)


def test_loss_registered_in_a_fresh_ray_worker(local_ray):
    """A Ray worker process imports verl and finds loss_mode 'reweight' via our verl.plugins entry point."""
    import os

    pid, _, names = local_ray.get(_registered_losses_task(local_ray).remote(), timeout=600)
    assert pid != os.getpid()
    assert "reweight" in names and "vanilla" in names


def test_wheel_ships_the_configs(tmp_path):
    """Configs must work from an installed wheel: the yaml files are inside it as reweight.configs."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = tmp_path.glob("verl_reweight-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in PRIMARY_CONFIGS:
        assert f"reweight/configs/{name}.yaml" in names
    assert "reweight/configs/method/dapo.yaml" in names and "reweight/configs/setup/qwen3_8b_base.yaml" in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "[verl.plugins]" in entry_points and "reweight = reweight.plugin" in entry_points
    assert OmegaConf.load(ROOT / "configs" / "dapo.yaml").defaults[0] == "ppo_trainer"


def test_workers_import_the_plugin_even_without_entry_point_discovery(local_ray, tmp_path):
    """prepare() routes our plugin through VERL_USE_EXTERNAL_MODULES in the job's runtime_env, which verl
    imports unguarded in every worker: here entry-point discovery is off and the loss is still registered."""
    cfg = compose_config("dapo_reweight", _local_run(tmp_path))
    prepare(cfg, dry_run=True)
    env_vars = dict(OmegaConf.to_container(cfg.ray_kwargs.ray_init.runtime_env.env_vars))
    assert env_vars["VERL_USE_EXTERNAL_MODULES"] == "reweight.plugin"
    env_vars["VERL_USE_EXTERNAL_PLUGINS"] = "none"
    task = _registered_losses_task(local_ray).options(runtime_env={"env_vars": env_vars})
    _, plugins_policy, names = local_ray.get(task.remote(), timeout=600)
    assert plugins_policy == "none" and "reweight" in names


def _import_verl(env_vars: dict[str, str], pythonpath: list[Path], cwd: Path) -> subprocess.CompletedProcess:
    """``import verl`` in a fresh process (what every Ray worker does first); prints whether 'reweight' is registered.
    ``cwd`` must not hold a ``reweight`` folder (``python -c`` puts it first on sys.path)."""
    import os

    code = "import verl; from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY as R; print('registered', 'reweight' in R)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERL_USE_EXTERNAL")}
    env.update(env_vars, PYTHONPATH=os.pathsep.join(str(p) for p in pythonpath))
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_entry_point_alone_can_fail_silently_and_the_external_modules_variable_cannot(tmp_path):
    """Why reweight-train sets VERL_USE_EXTERNAL_MODULES for its workers on top of the verl.plugins entry point
    (no Ray: the worker's first step, ``import verl``, in a fresh process). The entry point is skipped when
    discovery is off and its import errors are swallowed; the variable's import is neither."""
    off = {"VERL_USE_EXTERNAL_PLUGINS": "none"}
    out = _import_verl(off, [ROOT], tmp_path)
    assert out.returncode == 0 and out.stdout.split()[-1] == "False", out.stderr[-2000:]  # no loss, no error
    out = _import_verl({**off, "VERL_USE_EXTERNAL_MODULES": "reweight.plugin"}, [ROOT], tmp_path)
    assert out.returncode == 0 and out.stdout.split()[-1] == "True", out.stderr[-2000:]

    broken = tmp_path / "broken" / "reweight"  # an install whose plugin cannot be imported on this node
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("")
    (broken / "plugin.py").write_text("raise ImportError('No module named some_dependency_of_reweight')\n")
    out = _import_verl({}, [broken.parent, ROOT], tmp_path)
    assert out.returncode == 0 and out.stdout.split()[-1] == "False", out.stderr[-2000:]  # swallowed
    out = _import_verl({"VERL_USE_EXTERNAL_MODULES": "reweight.plugin"}, [broken.parent, ROOT], tmp_path)
    # loud, with the cause: verl imports it without a guard, so Python's own uncaught-exception exit and traceback
    assert out.returncode == 1 and "Traceback" in out.stderr and "some_dependency_of_reweight" in out.stderr


def test_wandb_without_credentials_refused_before_ray(tmp_path):
    """trainer.logger with wandb, no WANDB_API_KEY / netrc and not offline: a clear error, Ray never starts."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["HOME"] = str(tmp_path)  # no ~/.netrc
    out = subprocess.run(
        [sys.executable, "-m", "reweight.train", "--config-name", "dapo_reweight", *_local_run(tmp_path),
         "trainer.logger=[console,wandb]", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert out.returncode == 2, out.stderr[-3000:]
    (line,) = out.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith("reweight-train: error: ") and "WANDB_API_KEY" in line and "WANDB_MODE=offline" in line
    assert "ray init kwargs" not in out.stdout


def test_embedded_paths_are_found_as_written_without_resolving_the_config():
    """What reweight.embedded.prepare rewrites: every `embedded://` value, read as written (an interpolation
    that points at one is left to follow it; a missing `???` value does not raise), lists included."""
    from reweight.embedded import _embedded_keys

    cfg = compose_config("embedded", ["+extra.copy=${actor_rollout_ref.model.path}", "+extra.unset=???",
                                      "+extra.files=[plain,embedded://val.parquet]"])
    assert sorted(_embedded_keys(cfg)) == [
        ("actor_rollout_ref.model.path", "embedded://model"),
        ("data.train_files", "embedded://train.parquet"),
        ("data.val_files", "embedded://val.parquet"),
        ("extra.files.1", "embedded://val.parquet"),
    ]
    assert sorted(_embedded_keys(compose_config("embedded", ["actor_rollout_ref.model.path=/my/model"]))) == [
        ("data.train_files", "embedded://train.parquet"), ("data.val_files", "embedded://val.parquet")]
