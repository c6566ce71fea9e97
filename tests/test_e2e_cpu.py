"""verl's DAPO trainer end to end on CPU (reweight.cpu), through ``python -m reweight.train``.

Each run is a fresh process (its own local Ray cluster) on the embedded config with a quickly built
test model; step metrics are read from verl's own file logger. The runs (~1-2 min each on 2 cores):
2 steps of reweighted DAPO (filter_groups, dapo reward manager with overlong buffer, 2 FSDP2 ranks)
with a checkpoint (the smoke study's, shared); then runs resumed from that checkpoint
(``trainer.resume_mode=auto``) that train step 3 on identical, deterministically served rollouts: one
with scheme ``none`` of our loss and ``unit_mean`` (so the actor hook runs), W&B offline and a checkpoint
every step, which is killed (SIGKILL) in step 4 and rerun with the same command, and one with verl's
``vanilla`` loss.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch
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


def _smoke_steps(study: Path, arm: str) -> dict[int, dict]:
    path = study / "runs" / arm / "s1" / "metrics.jsonl"
    return _train_steps([json.loads(line) for line in path.read_text().splitlines() if line.strip()])


@pytest.mark.timeout(900)
def test_two_dapo_steps_with_the_reweight_loss_log_our_metrics_and_checkpoint(first_run, smoke_study):
    _, ckpt, steps = first_run
    assert sorted(steps) == [1, 2]
    for step, m in steps.items():
        assert m["training/global_step"] == step
        # our loss ran inside verl's actor: its metrics reached the trainer's logger
        assert m["actor/reweight/weight_max"] <= 1.2 + 1e-6 and m["actor/reweight/weight_min"] >= 1.0
        assert m["actor/reweight/weight_mean"] > 1.0  # low_prob, alpha 0.2: some p < 1 was upweighted
    # DAPO's dynamic sampling was on: verl logs filter_groups counts in the steps where it evicted groups.
    # Not necessarily every step, nor every run: the study pairs its arms' rollouts, so both arms' step 1
    # is the same draw (here without an all-right or all-wrong group). Over both arms' 4 steps, at ~10-30%
    # accuracy and n=8, an evicted group is nearly certain.
    both = [*steps.values(), *_smoke_steps(smoke_study[0], "dapo").values()]
    assert any(k.startswith("training/filter_groups/") for m in both for k in m)
    # the HF rollout's log-probs agree with the FSDP actor's recomputed old_log_prob (verl's own metric)
    assert max(m["training/rollout_probs_diff_max"] for m in steps.values()) < 1e-3
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    assert any((ckpt / "global_step_2" / "actor").iterdir())
    # the direction monitor (reweight.monitor.freq, 10 by default) measured step 1, where the policy is still the
    # base model: Δlog p of two identical forwards is 0 in every statistic; step 2 is not monitored, nor paid for
    from reweight.direction import PREFIX

    first = {k: v for k, v in steps[1].items() if k.startswith(PREFIX)}
    assert len(first) == 8 and "direction/corr_weight" in first, sorted(first)
    assert all(v == 0.0 for v in first.values()), first  # docs/monitor.md: 0, bit for bit
    assert "timing_s/direction" in steps[1]
    assert not any(k.startswith(PREFIX) for k in steps[2]) and "timing_s/direction" not in steps[2]


# The next runs resume from the step-2 checkpoint and train step 3 on identical rollouts: deterministic
# serving (per-request RNG seeded by verl's stable request ids) and no dynamic-sampling refills (their
# number depends on timing). One uses scheme `none` of our loss (and is killed in step 4, then rerun), the
# other verl's `vanilla` loss; the first step each run trains must have the same actor loss.
DETERMINISTIC = (
    "trainer.resume_mode=auto",
    "algorithm.filter_groups.enable=false",
    "actor_rollout_ref.rollout.full_determinism=true",
)


def _kill_when(proc: subprocess.Popen, ready, timeout: float) -> None:
    """SIGKILL ``proc`` and every process under it (Ray's, W&B's) as soon as ``ready()``; fail if it exits first."""
    import psutil

    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended (status {proc.returncode}) before it could be killed"
        assert time.monotonic() < deadline, "the run did not reach the kill point in time"
        time.sleep(0.1)
    family = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for child in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def _questions(rows: list[dict], train_questions: list[str]) -> Counter:
    """The training questions of a rollout dump (verl's ``rollout_data_dir``), one per sampled response."""
    found = Counter()
    for row in rows:
        matches = [q for q in train_questions if q in row["input"]]
        assert matches, row["input"]
        found[max(matches, key=len)] += 1
    return found


@pytest.fixture(scope="module")
def killed_and_resumed(first_run, assets):
    """Resume from step 2 with a checkpoint every step, W&B offline; SIGKILL in step 4; rerun the same command.

    Returns the checkpoint dir, the metrics of both launches (reweight-train's own files: one
    ``metrics-<time>.jsonl`` per launch beside the checkpoints), the rerun's log, and the run directory
    (its rollout dumps and W&B files).
    """
    root, ckpt, _ = first_run
    out = root / "killed"
    out.mkdir()

    def launches() -> list[list[dict]]:
        return [[json.loads(x) for x in f.read_text().splitlines() if x.endswith("}")] for f in sorted(ckpt.glob("metrics-*.jsonl"))]

    cmd = [
        sys.executable, "-m", "reweight.train", *e2e_asset_overrides(assets), *E2E_TRAIN_OVERRIDES, *DETERMINISTIC,
        "trainer.val_before_train=false", "trainer.test_freq=-1", "trainer.total_training_steps=4", "trainer.save_freq=1",
        f"trainer.default_local_dir={ckpt}", "actor_rollout_ref.actor.policy_loss.scheme=none",
        # unit_mean runs the actor hook's all-reduce over both ranks; with w ≡ 1 its scale is exactly 1
        "actor_rollout_ref.actor.policy_loss.unit_mean=true",
        "trainer.logger=[console,file,wandb]", "trainer.project_name=e2e", "trainer.experiment_name=killed",
        f"trainer.rollout_data_dir={out / 'rollouts'}", "reweight.monitor.freq=1",
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(out), "WANDB_SILENT": "true"}

    def step_3_done() -> bool:  # checkpointed and logged: the run is now in step 4
        tracker = ckpt / "latest_checkpointed_iteration.txt"
        return tracker.exists() and tracker.read_text().strip() == "3" and any(3 in _train_steps(r) for r in launches())

    with open(out / "killed.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=out, env=env, start_new_session=True)
        _kill_when(proc, step_3_done, RUN_TIMEOUT_S)
    (before,) = launches()
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=out, env=env)
    (out / "rerun.log").write_text(rerun.stdout + rerun.stderr)
    assert rerun.returncode == 0, f"the rerun failed (log: {out / 'rerun.log'}):\n{(rerun.stdout + rerun.stderr)[-4000:]}"
    records = [r for launch in launches() for r in launch]
    return ckpt, before, records, rerun.stdout + rerun.stderr, out


@pytest.mark.timeout(1200)
def test_killed_mid_step_resumes_from_its_last_checkpoint(killed_and_resumed, assets):
    ckpt, before, records, log, out = killed_and_resumed
    # the killed launch trained step 3 (resumed from step 2) and died in step 4, before logging it
    assert sorted(_train_steps(before)) == [3]
    # the rerun resumed from step 3's checkpoint, trained step 4 only, and logged nothing twice
    assert f"Resuming from {ckpt / 'global_step_3'}" in log
    assert "No dataloader state found" not in log
    assert [r["step"] for r in records if "actor/pg_loss" in r["data"]] == [3, 4]
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "4"
    # the dataloader continued where step 3 left it: step 4 trained the prompts that the dataloader state saved
    # with step 3's checkpoint serves next, restored by torchdata as verl restores it (a fresh dataloader
    # would have served the epoch's first prompts again)
    from torchdata.stateful_dataloader import StatefulDataLoader
    from verl.trainer.ppo.utils import create_rl_sampler

    from reweight.train import compose_config

    cfg = compose_config("embedded", [*e2e_asset_overrides(assets), *E2E_TRAIN_OVERRIDES, *DETERMINISTIC])
    size, n = cfg.data.train_batch_size, cfg.actor_rollout_ref.rollout.n
    train = pd.read_parquet(assets / "train.parquet")
    questions = [m[-1]["content"] for m in train["prompt"]]

    def served(state=None) -> Counter:
        """The next batch of verl's train dataloader (as V1 builds it without dynamic sampling), each prompt n times."""
        loader = StatefulDataLoader(list(range(len(train))), batch_size=cfg.data.get("gen_batch_size") or size,
                                    sampler=create_rl_sampler(cfg.data, range(len(train))),
                                    num_workers=cfg.data.dataloader_num_workers, drop_last=True, collate_fn=lambda b: b)
        if state is not None:
            loader.load_state_dict(state)
        return Counter(questions[i] for i in next(iter(loader)) for _ in range(n))

    dumped = _questions([json.loads(x) for x in (out / "rollouts" / "4.jsonl").read_text().splitlines()], questions)
    assert dumped == served(torch.load(ckpt / "global_step_3" / "data.pt", weights_only=False))
    assert dumped != served()


@pytest.mark.timeout(1200)
def test_a_resumed_run_continues_its_wandb_run(killed_and_resumed):
    ckpt, _, _, _, out = killed_and_resumed
    from reweight.launch.wandb_files import find_offline_runs
    from reweight.train import WANDB_ID_FILE

    run_id = (ckpt / WANDB_ID_FILE).read_text().strip()
    runs = find_offline_runs(out)
    assert len(runs) == 2 and {r.run_id for r in runs} == {run_id}  # two launches, one W&B run
    killed, rerun = sorted(runs, key=lambda r: r.start_time)
    assert rerun.state == "finished" and [row["_step"] for row in rerun.history if "actor/pg_loss" in row] == [4]
    # what W&B had not yet written when the killed launch died is lost with it (offline or online alike),
    # but nothing is logged twice: one line, step 3 (if it was written) then step 4
    steps = [row["_step"] for r in (killed, rerun) for row in r.history if "actor/pg_loss" in row]
    assert steps in ([3, 4], [4])


@pytest.mark.timeout(1200)
def test_the_direction_monitor_reaches_the_offline_wandb_run(killed_and_resumed):
    """reweight.monitor.freq=1 in the resumed runs: the rerun's W&B run holds the direction/ scalars and the three
    histograms at step 4, and Δlog p is measured against the initial weights, not the resumed checkpoint's."""
    from reweight.direction import HIST_KEYS
    from reweight.launch.wandb_files import find_offline_runs

    _, _, records, _, out = killed_and_resumed
    rerun = max(find_offline_runs(out), key=lambda r: r.start_time)
    (row,) = [row for row in rerun.history if row.get("_step") == 4 and "actor/pg_loss" in row]
    keys = ("logp_diff_mean", "logp_diff_q05", "logp_diff_q95", "frac_abs_gt_0.5", "frac_abs_gt_1",
            "logp_diff_mean_pos_adv", "logp_diff_mean_neg_adv", "corr_weight")
    # (wandb stores a whole-valued float such as 0.0 as the JSON integer 0)
    values = {k: row.get(f"direction/{k}") for k in keys}
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values.values()), values
    hists = rerun.histograms()[4]
    assert set(hists) == set(HIST_KEYS.values())
    n_tokens = sum(hists[HIST_KEYS["prob"]][0])
    assert n_tokens > 0 and all(sum(c) == n_tokens and len(e) == len(c) + 1 for c, e in hists.values())
    steps = _train_steps(records)
    for step in (3, 4):  # two steps trained since the base model: the update has moved some tokens
        m = steps[step]
        assert m["direction/logp_diff_q95"] - m["direction/logp_diff_q05"] > 1e-3, m
    # scheme none: w ≡ 1, no correlation to measure
    assert steps[4]["direction/corr_weight"] == 0.0


@pytest.mark.timeout(1200)
def test_resume_auto_continues_at_step_3(killed_and_resumed):
    _, _, records, _, _ = killed_and_resumed
    steps = _train_steps(records)
    assert min(steps) == 3 and steps[3]["training/global_step"] == 3


@pytest.mark.timeout(900)
def test_scheme_none_first_step_loss_equals_verl_vanilla(first_run, killed_and_resumed, assets):
    root, _, _ = first_run
    ours = _train_steps(killed_and_resumed[2])
    vanilla = _train_steps(
        _run(
            assets,
            root / "run3",
            *DETERMINISTIC,
            "trainer.total_training_steps=3",
            "trainer.save_freq=3",
            f"trainer.default_local_dir={root / 'ckpt_vanilla'}",
            "actor_rollout_ref.actor.policy_loss._target_=verl.workers.config.PolicyLossConfig",
            "actor_rollout_ref.actor.policy_loss.loss_mode=vanilla",
            "~actor_rollout_ref.actor.policy_loss.scheme",
            "~actor_rollout_ref.actor.policy_loss.alpha",
            "~actor_rollout_ref.actor.policy_loss.prob_source",
            "~actor_rollout_ref.actor.policy_loss.apply_to",
            "~actor_rollout_ref.actor.policy_loss.unit_mean",
            "~actor_rollout_ref.actor.policy_loss.kappa",
        )
    )
    assert sorted(vanilla) == [3]
    a, b = ours[3], vanilla[3]
    assert "actor/reweight/weight_mean" in a and "actor/reweight/weight_mean" not in b
    assert a["actor/reweight/weight_mean"] == 1.0
    # unit_mean (set on our run): the global mean of the applied weights, summed from every micro-batch's share
    assert a["actor/reweight/weight_mean_global"] == pytest.approx(1.0, abs=1e-6)
    # same rollouts ...
    for key in ("critic/score/mean", "response_length/mean", "actor/entropy"):
        assert a[key] == pytest.approx(b[key], rel=1e-6), key
    # ... same loss
    assert a["actor/pg_loss"] == pytest.approx(b["actor/pg_loss"], rel=1e-5, abs=1e-7)
