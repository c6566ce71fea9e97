"""verl's DAPO trainer end to end on CPU (reweight.cpu), through ``python -m reweight.train``.

Each run is a fresh process (its own local Ray cluster) on the embedded config with a quickly built
test model; step metrics are read from verl's own file logger. Three runs (~1-2 min each on 2 cores):
2 steps of reweighted DAPO (filter_groups, dapo reward manager with overlong buffer, 2 FSDP2 ranks)
with a checkpoint; then two runs resumed from that checkpoint (``trainer.resume_mode=auto``) that
train step 3 on identical, deterministically served rollouts, one with scheme ``none`` of our loss
and one with verl's ``vanilla`` loss.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import E2E_TRAIN_OVERRIDES, e2e_asset_overrides

pytestmark = pytest.mark.e2e

RUN_TIMEOUT_S = 420


@pytest.fixture(scope="module")
def assets(e2e_assets):
    return e2e_assets


def _run(assets: Path, out: Path, *overrides: str) -> list[dict]:
    """Train with the embedded config + ``overrides``; return the logged step metrics."""
    out.mkdir(parents=True, exist_ok=True)
    metrics = out / "metrics.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "reweight.train",
        *e2e_asset_overrides(assets),
        *E2E_TRAIN_OVERRIDES,
        "trainer.val_before_train=false",
        "trainer.test_freq=-1",
        "trainer.logger=[console,file]",
        f"+ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH={metrics}",
        *overrides,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=out)
    (out / "log.txt").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, f"training failed (log: {out / 'log.txt'}):\n{(proc.stdout + proc.stderr)[-4000:]}"
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]


def _train_steps(records: list[dict]) -> dict[int, dict]:
    return {r["step"]: r["data"] for r in records if "actor/pg_loss" in r["data"]}


@pytest.fixture(scope="module")
def first_run(smoke_study, tmp_path_factory):
    """The smoke study's low_prob run (reweighted DAPO, α = 0.2: 2 steps, checkpoint at step 2), shared here.

    Its checkpoint is copied twice: the resumed runs below write step 3 into their own copies.
    """
    study, _, _ = smoke_study
    run = study / "runs" / "low_prob" / "s1"
    root = tmp_path_factory.mktemp("e2e")
    shutil.copytree(run / "checkpoints", root / "ckpt")
    shutil.copytree(run / "checkpoints", root / "ckpt_vanilla")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return root, root / "ckpt", _train_steps(records)


@pytest.mark.timeout(900)
def test_two_dapo_steps_with_the_reweight_loss_log_our_metrics_and_checkpoint(first_run):
    _, ckpt, steps = first_run
    assert sorted(steps) == [1, 2]
    for step, m in steps.items():
        assert m["training/global_step"] == step
        # our loss ran inside verl's actor: its metrics reached the trainer's logger
        assert m["actor/reweight/weight_max"] <= 1.2 + 1e-6 and m["actor/reweight/weight_min"] >= 1.0
        assert m["actor/reweight/weight_mean"] > 1.0  # low_prob, alpha 0.2: some p < 1 was upweighted
    # DAPO's dynamic sampling was on: verl logs filter_groups counts in the steps where it evicted groups
    # (not necessarily every step; at ~10-30% accuracy and n=8, all-wrong groups are nearly certain)
    assert any(k.startswith("training/filter_groups/") for m in steps.values() for k in m)
    # the HF rollout's log-probs agree with the FSDP actor's recomputed old_log_prob (verl's own metric)
    assert max(m["training/rollout_probs_diff_max"] for m in steps.values()) < 1e-3
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    assert any((ckpt / "global_step_2" / "actor").iterdir())


# The next two runs both resume from the step-2 checkpoint and train step 3 on identical rollouts:
# deterministic serving (per-request RNG seeded by verl's stable request ids) and no dynamic-sampling
# refills (their number depends on timing). One uses scheme `none` of our loss, the other verl's
# `vanilla` loss; the first step each run trains must have the same actor loss.
DETERMINISTIC_STEP_3 = (
    "trainer.total_training_steps=3",
    "trainer.save_freq=3",
    "trainer.resume_mode=auto",
    "algorithm.filter_groups.enable=false",
    "actor_rollout_ref.rollout.full_determinism=true",
)


@pytest.fixture(scope="module")
def resumed_none(first_run, assets):
    root, ckpt, _ = first_run
    steps = _train_steps(
        _run(
            assets,
            root / "run2",
            *DETERMINISTIC_STEP_3,
            f"trainer.default_local_dir={ckpt}",
            "actor_rollout_ref.actor.policy_loss.scheme=none",
        )
    )
    return ckpt, steps


@pytest.mark.timeout(900)
def test_resume_auto_continues_at_step_3(resumed_none):
    ckpt, steps = resumed_none
    assert sorted(steps) == [3]
    assert steps[3]["training/global_step"] == 3
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "3"


@pytest.mark.timeout(900)
def test_scheme_none_first_step_loss_equals_verl_vanilla(first_run, resumed_none, assets):
    root, _, _ = first_run
    _, ours = resumed_none
    vanilla = _train_steps(
        _run(
            assets,
            root / "run3",
            *DETERMINISTIC_STEP_3,
            f"trainer.default_local_dir={root / 'ckpt_vanilla'}",
            "actor_rollout_ref.actor.policy_loss._target_=verl.workers.config.PolicyLossConfig",
            "actor_rollout_ref.actor.policy_loss.loss_mode=vanilla",
            "~actor_rollout_ref.actor.policy_loss.scheme",
            "~actor_rollout_ref.actor.policy_loss.alpha",
            "~actor_rollout_ref.actor.policy_loss.prob_source",
            "~actor_rollout_ref.actor.policy_loss.apply_to",
        )
    )
    assert sorted(vanilla) == [3]
    a, b = ours[3], vanilla[3]
    assert "actor/reweight/weight_mean" in a and "actor/reweight/weight_mean" not in b
    assert a["actor/reweight/weight_mean"] == 1.0
    # same rollouts ...
    for key in ("critic/score/mean", "response_length/mean", "actor/entropy"):
        assert a[key] == pytest.approx(b[key], rel=1e-6), key
    # ... same loss
    assert a["actor/pg_loss"] == pytest.approx(b["actor/pg_loss"], rel=1e-5, abs=1e-7)
