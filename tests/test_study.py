"""reweight-study: statistics against naive references, refusals before any run, the cluster plan, and the
smoke study end to end (real verl training runs, then every report section recomputed from its files)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import E2E_TRAIN_OVERRIDES, e2e_asset_overrides

from reweight.evaluation.records import ProblemResult
from reweight.study.stats import mean_ci, paired_difference, pass_at_k_matrix, results_matrix, seeds_to_resolve, verdict

# ---------------------------------------------------------------------------------------- statistics


def _naive_bootstrap(values: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    """The two-level bootstrap written as loops: the same draws as mean_ci (seeds, then problems)."""
    rng = np.random.default_rng(seed)
    s, p = values.shape
    seeds, problems = rng.integers(0, s, size=(resamples, s)), rng.integers(0, p, size=(resamples, p))
    means = []
    for r in range(resamples):
        picked = [values[i, j] for i in seeds[r] for j in problems[r]]
        means.append(sum(picked) / len(picked))
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


def test_mean_ci_and_paired_difference_match_a_naive_bootstrap():
    rng = np.random.default_rng(0)
    arm = rng.random((3, 25))
    base = arm - 0.05 + 0.01 * rng.standard_normal(arm.shape)
    out = mean_ci(arm, resamples=300, seed=5)
    assert out["mean"] == pytest.approx(arm.mean())
    assert out["ci95"] == pytest.approx(list(_naive_bootstrap(arm, 300, 5)))
    diff = paired_difference(arm, base, resamples=300, seed=5)
    assert diff["delta"] == pytest.approx((arm - base).mean())
    assert diff["ci95"] == pytest.approx(list(_naive_bootstrap(arm - base, 300, 5)))
    # pairing removes the shared between-problem spread: the paired interval is far narrower
    unpaired = mean_ci(arm, 300, seed=5)["ci95"][1] - mean_ci(arm, 300, seed=5)["ci95"][0]
    assert diff["ci95"][1] - diff["ci95"][0] < unpaired / 5
    assert verdict("x", "dapo", diff["delta"], diff["ci95"]).startswith("**x beats dapo**")
    flipped = paired_difference(base, arm, 300, seed=5)
    assert "is worse than dapo" in verdict("x", "dapo", flipped["delta"], flipped["ci95"])
    assert "no difference" in verdict("x", "dapo", 0.001, [-0.01, 0.012])
    with pytest.raises(ValueError, match="same seeds and problems"):
        paired_difference(arm, base[:2], 10)


def test_seeds_to_resolve_follows_one_over_sqrt_seeds_when_seeds_dominate():
    # training runs whose accuracy differences spread by 6 points from seed to seed, the same on every problem:
    # the projection from 4-seed studies (their median: one 4-seed estimate is rough) is the seed count whose
    # studies, simulated with that many seeds, do have intervals of about ±3 points
    rng = np.random.default_rng(3)

    def ci(seeds):
        effect = 0.06 * rng.standard_normal((seeds, 1))
        return paired_difference(np.repeat(effect, 40, axis=1), np.zeros((seeds, 40)), resamples=1000, seed=1)["ci95"]

    need = int(np.median([seeds_to_resolve(ci(4), 4) for _ in range(20)]))
    assert 6 <= need <= 16
    assert np.mean([(c[1] - c[0]) / 2 for c in (ci(need) for _ in range(20))]) == pytest.approx(0.03, rel=0.25)
    assert seeds_to_resolve([-0.01, 0.01], 3) == 3  # already within ±3 points: no more seeds
    assert seeds_to_resolve([-0.06, 0.06], 3) == 12  # twice too wide: four times the seeds
    text = verdict("x", "dapo", 0.0, [-0.06, 0.06], seeds=3)
    assert "no difference" in text and "±6.0 points with 3 seed(s)" in text and "about 12 seeds per arm" in text
    assert "seeds per arm" not in verdict("x", "dapo", 0.0, [-0.02, 0.02], seeds=3)


def _result(uid: str, correct: list[bool]) -> ProblemResult:
    return ProblemResult(uid=uid, data_source="t", ground_truth="1", prompt="q", responses=["r"] * len(correct), correct=correct)


def test_results_matrix_and_pass_at_k_against_enumeration():
    runs = [
        [_result("a", [True, False, False, True]), _result("b", [False] * 4)],
        [_result("b", [True, True, False, False]), _result("a", [False, False, False, True])],
    ]
    uids, n, c = results_matrix(runs)
    assert uids == ["a", "b"] and n.tolist() == [[4, 4], [4, 4]] and c.tolist() == [[2, 0], [1, 2]]
    for k in (1, 2, 3, 4):
        got = pass_at_k_matrix(n, c, k)
        for s, run in enumerate(runs):
            by_uid = {r.uid: r.correct for r in run}
            for j, uid in enumerate(uids):
                subsets = list(itertools.combinations(by_uid[uid], k))
                assert got[s, j] == pytest.approx(sum(any(x) for x in subsets) / len(subsets))
    with pytest.raises(ValueError, match="lacks 1 problem"):
        results_matrix([runs[0], runs[1][:1]])


# ---------------------------------------------------------------------------------------- refusals


def _smoke_args(assets, out) -> list[str]:
    return ["--smoke", "--out", str(out), "--test-data", str(assets / "test.parquet"), *e2e_asset_overrides(assets), *E2E_TRAIN_OVERRIDES]


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--arm", "typo=actor_rollout_ref.actor.policy_loss.scheme=lowprob"], "arm 'typo'"),
        (["--arm", "neg=actor_rollout_ref.actor.policy_loss.alpha=-1"], "alpha"),
        (["--arm", "cold=actor_rollout_ref.rollout.temperature=0"], "arm 'cold' (overrides ['actor_rollout_ref.rollout.temperature=0']): "
         "actor_rollout_ref.rollout.temperature=0: must be > 0"),
        (["trainer.no_such_key=1"], "no_such_key"),
        (["--arm", "bad name=trainer.total_epochs=1"], "arm name 'bad name'"),
        (["--seeds", "1,1"], "seeds=[1, 1]"),
        (["--test-data", "/nonexistent/test.parquet"], "/nonexistent/test.parquet"),
    ],
)
def test_a_bad_study_is_refused_before_any_run(e2e_assets, tmp_path, capsys, extra, needle):
    import ray

    from reweight.study.cli import main

    out = tmp_path / "study"
    assert main([*_smoke_args(e2e_assets, out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("reweight-study: error:") and needle in err and "Traceback" not in err
    assert not (out / "runs").exists() and not (out / "study.json").exists()
    assert not ray.is_initialized()


def test_a_study_without_the_dapo_baseline_is_refused(tmp_path, capsys):
    from reweight.study.cli import main

    (tmp_path / "arms.yaml").write_text("low_prob: [actor_rollout_ref.actor.policy_loss.alpha=0.2]\n")
    assert main(["--arms", str(tmp_path / "arms.yaml"), "--out", str(tmp_path / "s"), "--dry-run"]) == 2
    assert "an arm named 'dapo'" in capsys.readouterr().err


@pytest.mark.timeout(300)
def test_a_directory_of_another_study_is_refused_unless_overwrite(e2e_assets, tmp_path):
    from reweight.study.pipeline import Study
    from reweight.study.spec import StudyInputError, StudySpec

    common = dict(overrides=[*e2e_asset_overrides(e2e_assets), *E2E_TRAIN_OVERRIDES], test_data=str(e2e_assets / "test.parquet"))
    out = tmp_path / "study"
    first = Study(StudySpec.smoke(**common), out, log=lambda *_: None)
    first.prepare()
    (out / "eval").mkdir()
    (out / "eval" / "base.jsonl").write_text("{}\n")
    other = StudySpec.smoke(n=8, **common)
    with pytest.raises(StudyInputError, match=r"other settings \(differ: n\)"):
        Study(other, out).prepare()
    assert (out / "eval" / "base.jsonl").exists()  # nothing discarded without --overwrite
    Study(other, out, overwrite=True).prepare()
    assert json.loads((out / "study.json").read_text())["digest"] == other.digest()
    assert not (out / "eval").exists()
    assert [r.name for r in first.runs] == ["dapo/s1", "low_prob/s1"]
    # every run trains our loss with its arm's scheme, its seed, and saves full-precision HF weights
    for run in first.runs:
        assert f"seed={run.seed}" in run.overrides and any("hf_model" in o for o in run.overrides)


@pytest.mark.timeout(300)
def test_cluster_dry_run_plans_one_slurm_job_per_run(tmp_path, capsys, monkeypatch):
    import pandas as pd

    from reweight.study.cli import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    data = tmp_path / "data.parquet"
    pd.DataFrame({"prompt": [[{"role": "user", "content": "1+1?"}]], "data_source": ["aime24"]}).to_parquet(data)
    out = tmp_path / "study"
    argv = [
        "--config-name", "qwen25_math_7b_reweight", "--test-data", str(data), "--launch", "slurm", "--nodes", "4",
        "--gpus-per-node", "8", "--seeds", "1,2", "--dry-run", "--out", str(out),
        f"data.train_files={data}", f"data.val_files={data}",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    scripts = sorted((out / "slurm").glob("*.sbatch"))
    assert len(scripts) == 5 * 2 and "nothing trained" in printed  # the default preset: 5 arms (low_prob_unit included) × 2 seeds
    for script in scripts:
        text = script.read_text()
        arm, seed = script.stem.rsplit("_s", 1)
        assert f"seed={seed}" in text and "--nodes=4" in text and "trainer.nnodes=4" in text
        assert str(out / "runs" / arm / f"s{seed}" / "checkpoints") in text
        assert "seed_by_prompt" not in text  # paired sampling is the hf rollout's; vLLM runs sample on their own
    assert not (out / "study.json").exists() and not (out / "runs").exists()


# ---------------------------------------------------------------------------------------- end to end


@pytest.mark.e2e
@pytest.mark.timeout(1800)
def test_smoke_study_end_to_end(smoke_study):
    from PIL import Image

    from reweight.study.report import FIGURES
    from reweight.study.spec import ARM_PRESETS

    out, console, _ = smoke_study
    report = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    for heading in ("## Accuracy (Table 1)", "## Verdict", "## Training curves", "## Direction analysis (Fig. 1b)",
                    "## Selective token replacement (Fig. 1c)", "## Test-time extrapolation (Fig. 4)", "## Support"):
        assert heading in md
    for name in FIGURES:
        with Image.open(out / name) as im:
            im.verify()
    assert "[study] 11/11" in console and "elapsed" in console and "left ~" in console

    # the accuracy table, recomputed from the reweight-eval results files the report names
    n = report["n"]
    assert n == 4
    avg = {}
    for arm in ("dapo", "low_prob"):
        entry = report["arms"][arm]
        assert entry["overrides"] == ARM_PRESETS["smoke"][arm] and entry["seeds"] == [1]
        per_seed = []
        for rel in entry["results_files"]:
            meta, *rows = [json.loads(line) for line in (out / rel).read_text().splitlines()]
            assert meta["meta"]["n"] == n and meta["meta"]["scorer"] == "dapo"
            assert len(rows) == 16 and all(len(r["correct"]) == n for r in rows)
            per_seed.append(np.mean([np.mean(r["correct"]) for r in rows]))
        avg[arm] = float(np.mean(per_seed))
        assert entry["avg_at_n"]["mean"] == pytest.approx(avg[arm])
        lo, hi = entry["avg_at_n"]["ci95"]
        assert lo <= avg[arm] <= hi
        assert sorted(entry["pass_at_k"], key=int) == ["1", "2", "4"]
        assert entry["pass_at_k"]["1"]["mean"] == pytest.approx(avg[arm])  # unbiased pass@1 is the mean accuracy
        assert entry["pass_at_k"]["4"]["mean"] >= entry["pass_at_k"]["1"]["mean"]
    [comp] = report["comparisons"]
    assert comp["arm"] == "low_prob" and comp["delta"] == pytest.approx(avg["low_prob"] - avg["dapo"])
    assert comp["ci95"][0] <= comp["delta"] <= comp["ci95"][1]
    assert comp["verdict"] in md  # the verdict printed is the one computed
    expected = "beats" if comp["ci95"][0] > 0 else "is worse than" if comp["ci95"][1] < 0 else "no difference"
    assert expected in comp["verdict"]

    # training curves from verl's file logger: validation before training and after each of the 2 steps
    for arm in ("dapo", "low_prob"):
        curve = report["training"][arm]["1"]
        assert sorted(int(s) for s in curve["val_accuracy"]) == [0, 1, 2] and sorted(int(s) for s in curve["reward"]) == [1, 2]
    # paired sampling (hf rollout): same seed, same weights before training -> the same validation samples
    assert report["paired_sampling"] and "paired across arms" in md
    assert report["training"]["dapo"]["1"]["val_accuracy"]["0"] == report["training"]["low_prob"]["1"]["val_accuracy"]["0"]
    # direction analysis, replacement ratios, extrapolation, support: present and computed
    assert report["analysis"]["dapo"]["n_tokens"] > 0 and report["analysis"]["low_prob"]["n_tokens"] > 0
    assert set(report["replacement"]["ratio"]) == {"logp_diff", "entropy", "kl", "random"}
    assert report["extrapolation"]["dapo"]["arm"] == "dapo" and report["extrapolation"]["best"]["arm"] == "low_prob"
    assert set(report["extrapolation"]["dapo"]["gamma"]) == {"0.1"}
    assert set(report["support"]) == {"dapo", "low_prob"}
    for arm in ("dapo", "low_prob"):  # every test problem is in exactly one support category
        s = report["support"][arm]
        assert s["preservation"] + s["shrinkage"] + s["expansion"] + s["neither"] == 16
        assert s["answer_entropy_rl"] is not None and s["answer_entropy_rl"] >= 0


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_smoke_study_rerun_skips_every_finished_step(smoke_study, e2e_assets):
    out, _, _ = smoke_study
    before = {p: p.stat().st_mtime_ns for p in (out / "eval").rglob("*.jsonl")}
    cmd = [sys.executable, "-m", "reweight.study.cli", *_smoke_args(e2e_assets, out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "11 of 11 steps already done" in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in (out / "eval").rglob("*.jsonl")} == before


def test_recovery_ratios_need_a_gap_between_base_and_rl():
    from reweight.study.report import recovery_ratios

    def row(criterion, tau, acc, ratio, mode="replace"):
        return dict(criterion=criterion, tau=tau, mode=mode, accuracy=acc, replacement_ratio=ratio)

    rows = [row("none", 0, 0.2, 0.0), row("all", 0, 0.4, 1.0), row("logp_diff", -0.5, 0.3, 0.02),
            row("logp_diff", 0.0, 0.39, 0.05), row("random", 0.5, 0.25, 0.5), row("random", 0.9, 0.385, 0.9)]
    rec = recovery_ratios(rows)
    assert rec["target_accuracy"] == pytest.approx(0.2 + 0.9 * 0.2) and rec["rl_above_base"]
    assert rec["ratio"] == {"logp_diff": 0.05, "random": 0.9}  # smallest ratio at or above 38%
    flat = recovery_ratios([row("none", 0, 0.4, 0.0), row("all", 0, 0.35, 1.0), row("kl", 0.1, 0.45, 0.1)])
    assert not flat["rl_above_base"] and flat["target_accuracy"] is None and flat["ratio"] == {"kl": None}


def test_a_relative_out_becomes_absolute_for_the_runs(tmp_path, monkeypatch):
    """The training process runs in its run directory: every path handed to it must be absolute."""
    from reweight.study.pipeline import Study
    from reweight.study.spec import StudySpec

    monkeypatch.chdir(tmp_path)
    study = Study(StudySpec.smoke(), "outputs/study")
    assert study.out == tmp_path / "outputs" / "study" and study.out.is_absolute()
