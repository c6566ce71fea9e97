"""reweight-study: statistics against naive references, refusals before any run, the cluster plan, and the
smoke study end to end (real verl training runs, then every report section recomputed from its files)."""

from __future__ import annotations

import itertools
import json
import math
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


def test_an_embedded_study_sizes_each_run_to_one_core_and_a_cluster_config_keeps_its_layout():
    from reweight.cpu.resources import check_cpu_config
    from reweight.preflight import check_cross_rules
    from reweight.study.cli import build_parser, spec_from_args
    from reweight.study.spec import EMBEDDED_RUN_LAYOUT, StudySpec
    from reweight.train import compose_config

    spec = spec_from_args(build_parser().parse_args([]))
    assert spec.run_overrides()[: len(EMBEDDED_RUN_LAYOUT)] == list(EMBEDDED_RUN_LAYOUT)
    cfg = compose_config("embedded", spec.run_overrides())
    assert (cfg.trainer.n_gpus_per_node, cfg.actor_rollout_ref.rollout.tensor_model_parallel_size) == (1, 1)
    assert (cfg.actor_rollout_ref.rollout.agent.num_workers, cfg.data.dataloader_num_workers) == (1, 0)
    check_cross_rules(cfg)  # one rank still divides the batch and holds one rollout replica
    check_cpu_config(cfg)
    # --smoke keeps the setup's two ranks: the e2e tests resume its checkpoints on two ranks
    smoke = spec_from_args(build_parser().parse_args(["--smoke"]))
    assert not set(EMBEDDED_RUN_LAYOUT) & set(smoke.run_overrides())
    # a cluster config keeps its own ranks and workers, from the CLI or built directly; the user's overrides come last
    spec = spec_from_args(build_parser().parse_args(["--config-name", "qwen25_math_7b_reweight", "data.dataloader_num_workers=2"]))
    assert not set(EMBEDDED_RUN_LAYOUT) & set(spec.run_overrides())
    assert spec.run_overrides()[-1] == "data.dataloader_num_workers=2" and "trainer.val_before_train=false" in spec.run_overrides()
    assert not set(EMBEDDED_RUN_LAYOUT) & set(StudySpec(config_name="qwen25_math_7b_reweight").run_overrides())


@pytest.mark.timeout(300)
def test_cluster_dry_run_plans_one_slurm_job_per_run(tmp_path, capsys, monkeypatch):
    import pandas as pd

    from reweight.study.cli import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    data = tmp_path / "data.parquet"
    # the columns verl reads (the pre-flight refuses training data without reward_model)
    pd.DataFrame({"prompt": [[{"role": "user", "content": "1+1?"}]], "data_source": ["aime24"],
                  "reward_model": [{"style": "rule", "ground_truth": "2"}]}).to_parquet(data)
    out = tmp_path / "study"
    argv = [
        "--config-name", "qwen25_math_7b_reweight", "--test-data", str(data), "--launch", "slurm", "--nodes", "4",
        "--gpus-per-node", "8", "--seeds", "1,2", "--dry-run", "--out", str(out),
        f"data.train_files={data}", f"data.val_files={data}",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    scripts = sorted((out / "slurm").glob("*.sbatch"))
    assert len(scripts) == 4 * 2 and "nothing trained" in printed  # the default preset: 4 arms (low_prob_unit included) × 2 seeds
    for script in scripts:
        text = script.read_text()
        arm, seed = script.stem.rsplit("_s", 1)
        assert f"seed={seed}" in text and "--nodes=4" in text and "trainer.nnodes=4" in text
        assert str(out / "runs" / arm / f"s{seed}" / "checkpoints") in text
        assert "seed_by_prompt" not in text  # paired sampling is the hf rollout's; vLLM runs sample on their own
        assert "n_gpus_per_node=1" not in text and "dataloader_num_workers" not in text  # the one-core layout is the embedded study's
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
    assert comp["seed_correlation"] is None  # one seed: no correlation over seeds
    assert comp["half_width_unpaired"] >= 0 and "± paired / unpaired" in md
    for arm in ("dapo", "low_prob"):  # the gain over the base: the same problems, the base's mean subtracted
        gain = report["arms"][arm]["vs_base"]
        assert gain["mean"] == pytest.approx(avg[arm] - report["base"]["avg_at_n"]["mean"])
    expected = "beats" if comp["ci95"][0] > 0 else "is worse than" if comp["ci95"][1] < 0 else "no difference"
    assert expected in comp["verdict"]

    # training curves from verl's file logger: validation before training and after each of the 2 steps
    for arm in ("dapo", "low_prob"):
        curve = report["training"][arm]["1"]
        assert sorted(int(s) for s in curve["val_accuracy"]) == [0, 1, 2] and sorted(int(s) for s in curve["reward"]) == [1, 2]
    # paired sampling (hf rollout): same seed, same weights before training -> the same validation samples
    assert report["paired_sampling"] and "paired across arms" in md
    assert report["training"]["dapo"]["1"]["val_accuracy"]["0"] == report["training"]["low_prob"]["1"]["val_accuracy"]["0"]
    # the per-seed sections (1 seed here): each seed's values from its own tool output, the mean over seeds of them
    for arm in ("dapo", "low_prob"):
        a = report["analysis"][arm]
        summary = json.loads((out / "analysis" / arm / "s1" / "summary.json").read_text())
        assert a["seeds"] == [1] and a["n_tokens"] == summary["n_tokens"] > 0
        # the report's keys, each read from reweight-analyze's summary.json by its own path (written out here,
        # not with the report's reader): a wrong key would give None on one side only
        metric = summary["metrics"]
        expected = {
            "delta_logp_q05": metric["delta_logp"]["all"]["quantiles"]["0.05"],
            "delta_logp_q50": metric["delta_logp"]["all"]["quantiles"]["0.5"],
            "delta_logp_q95": metric["delta_logp"]["all"]["quantiles"]["0.95"],
            "frac_abs_delta_logp_above_0.5": summary["abs_delta_logp_above"]["all"]["0.5"],
            "frac_abs_delta_logp_above_1.0": summary["abs_delta_logp_above"]["all"]["1.0"],
            "kl_rl_base_mean": metric["kl_rl_base"]["all"]["mean"],
            "entropy_rl_mean": metric["entropy_rl"]["all"]["mean"],
        }
        assert set(a["per_seed"]["1"]) == {"n_tokens", *expected}
        for name, value in expected.items():
            assert isinstance(value, float) and math.isfinite(value), (arm, name, value)
            assert a["per_seed"]["1"][name] == value and a["mean_ci"][name]["mean"] == pytest.approx(value)
    assert "## Direction analysis (Fig. 1b)" in md and "mean over seeds [95% percentile bootstrap interval over seeds]" in md
    # replacement: seed 1 enters Fig. 1c iff its dapo model beats the base on the test evaluation, else it is named
    base_rows = [json.loads(line) for line in (out / "eval" / "base.jsonl").read_text().splitlines()[1:]]
    base_avg = float(np.mean([np.mean(r["correct"]) for r in base_rows]))
    rep = report["replacement"]
    assert rep["per_seed"]["1"]["rl_avg_at_n"] == pytest.approx(avg["dapo"]) and rep["per_seed"]["1"]["base_avg_at_n"] == pytest.approx(base_avg)
    sweep = {(r["criterion"], r["tau"], r["mode"]): r for r in json.loads((out / "decode" / "dapo" / "s1" / "results.json").read_text())}
    assert rep["per_seed"]["1"]["sweep_base_accuracy"] == sweep[("none", 0.0, "replace")]["accuracy"]
    assert {c for c, *_ in sweep} == {"none", "all", "logp_diff", "entropy", "kl", "random"}  # every seed's grid is decoded
    assert set(rep["per_seed"]["1"]["recovery_ratio"]) == {"logp_diff", "entropy", "kl", "random"}
    if avg["dapo"] > base_avg:
        assert rep["used_seeds"] == [1] and rep["excluded"] == [] and set(rep["ratio"]) == {"logp_diff", "entropy", "kl", "random"}
        assert "Over seeds [1]" in md
    else:
        assert rep["used_seeds"] == [] and [e["seed"] for e in rep["excluded"]] == [1] and rep["curve"] == {}
        assert "seed 1 excluded: RL avg@n" in md and "No dapo seed's model beats the base" in md
    extra = report["extrapolation"]
    assert extra["dapo"]["arm"] == "dapo" and extra["best"]["arm"] == "low_prob"
    for label in ("dapo", "best"):
        rows = json.loads((out / "decode" / label / "s1" / "results.json").read_text())
        [g] = [r for r in rows if r["mode"] == "extrapolate"]
        assert extra[label]["seeds"] == [1] and set(extra[label]["gamma"]) == {"0.1"}
        assert extra[label]["per_seed"]["1"]["gamma"]["0.1"] == g["accuracy"] == pytest.approx(extra[label]["gamma"]["0.1"]["mean"])
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


# ---------------------------------------------------------------------------------------- per-seed sections


def _naive_nested(groups, resamples: int, seed: int) -> tuple[float, float]:
    """nested_mean_ci's bootstrap as loops over the same draws: seeds, then each drawn seed's own values."""
    rng = np.random.default_rng(seed)
    s, width = len(groups), max(len(g) for g in groups)
    picks, u = rng.integers(0, s, size=(resamples, s)), rng.random((resamples, s, width))
    means = []
    for r in range(resamples):
        seed_means = []
        for i, pick in enumerate(picks[r]):
            g = groups[pick]
            drawn = [g[int(u[r, i, j] * len(g))] for j in range(len(g))]
            seed_means.append(sum(drawn) / len(drawn))
        means.append(sum(seed_means) / len(seed_means))
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


def test_nested_mean_ci_matches_a_naive_bootstrap_over_seeds_and_prompts():
    from reweight.study.stats import nested_mean_ci

    rng = np.random.default_rng(1)
    groups = [list(rng.random(4)), list(rng.random(3) + 0.3), list(rng.random(5))]  # seeds hold different prompt counts
    out = nested_mean_ci(groups, resamples=200, seed=3)
    assert out["mean"] == pytest.approx(np.mean([np.mean(g) for g in groups]))  # every seed weighs the same
    assert out["ci95"] == pytest.approx(list(_naive_nested(groups, 200, 3)))
    # one value per seed: the percentile bootstrap over seeds of their mean
    values = [0.1, 0.4, 0.35, 0.2]
    rng2 = np.random.default_rng(9)
    picks = rng2.integers(0, 4, size=(500, 4))
    naive = np.quantile([np.mean([values[i] for i in row]) for row in picks], [0.025, 0.975])
    assert nested_mean_ci([[v] for v in values], 500, seed=9)["ci95"] == pytest.approx(list(naive))
    # one seed: the interval is over its prompts and holds the mean; constant values: a point interval
    single = nested_mean_ci([[0.0, 1.0, 1.0, 0.0, 1.0]], 400, seed=0)
    assert single["mean"] == pytest.approx(0.6) and single["ci95"][0] < 0.6 < single["ci95"][1]
    assert nested_mean_ci([[0.5, 0.5], [0.5]], 50)["ci95"] == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match="one or more values"):
        nested_mean_ci([[0.1], []])


def _write_sweep(root, label, seed, points, n_prompts=3, n=2, grid=True, arm="dapo"):
    """A reweight-decode sweep directory as the tool writes it: results.json and points/<key>.samples.jsonl.

    ``points``: (criterion, tau, mode, gamma, replacement_ratio, [correct per prompt and sample]).
    """
    from reweight.decoding.sweep import GridPoint

    out = root / "decode" / label / f"s{seed}"
    (out / "points").mkdir(parents=True)
    rows = []
    for crit, tau, mode, gamma, ratio, correct in points:
        key = GridPoint(crit, tau, mode, gamma).key
        assert len(correct) == n_prompts * n
        recs = [{"prompt_index": k // n, "sample_index": k % n, "correct": c} for k, c in enumerate(correct)]
        (out / "points" / f"{key}.samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        rows.append(dict(key=key, criterion=crit, tau=tau, mode=mode, gamma=gamma, accuracy=float(np.mean(correct)), replacement_ratio=ratio))
    (out / "results.json").write_text(json.dumps(rows))
    (root / "steps").mkdir(exist_ok=True)
    (root / "steps" / f"decode_{label}_s{seed}.json").write_text(json.dumps({"arm": arm, "seed": seed, "replacement_grid": grid}))


def _synthetic_study(tmp_path, seeds, dapo_accuracy, base_accuracy=0.5):
    """A Study over ``tmp_path`` with reweight-eval results written for the base and each dapo seed (4 problems, n = 4)."""
    from reweight.evaluation.records import write_results
    from reweight.study.pipeline import Run, Study
    from reweight.study.spec import StudySpec

    spec = StudySpec.smoke(seeds=list(seeds), arms={"dapo": []}, bootstrap=300, extrapolate_tau=-0.5, gammas=[0.1])
    study = Study(spec, tmp_path)
    study.runs = [Run("dapo", s, [], tmp_path / "runs" / "dapo" / f"s{s}", 2) for s in seeds]

    def results(acc):
        k = round(acc * 16)  # 16 samples over 4 problems: k of them correct
        flat = [i < k for i in range(16)]
        return [_result(f"u{j}", flat[4 * j: 4 * j + 4]) for j in range(4)]

    (tmp_path / "eval" / "dapo").mkdir(parents=True)
    write_results(study.eval_path(None), {"n": 4}, results(base_accuracy))
    for s, acc in zip(seeds, dapo_accuracy):
        write_results(study.eval_path(study.runs[seeds.index(s)]), {"n": 4}, results(acc))
    return study


def test_replacement_uses_only_seeds_whose_rl_model_beats_the_base_and_names_the_others(tmp_path):
    from PIL import Image

    from reweight.study.report import (
        REPLACEMENT_RULE, _seed_sections_markdown, extrapolation_section, nested_mean_ci, plot_fig1c, plot_fig4,
        replacement_section, rl_beats_base,
    )

    assert rl_beats_base(0.51, 0.5) and not rl_beats_base(0.5, 0.5) and not rl_beats_base(0.141, 0.234)
    # seeds 1 and 3 beat the base (0.5) on the test evaluation, seed 2 does not (0.25): it must be excluded and named
    study = _synthetic_study(tmp_path, [1, 2, 3], [0.75, 0.25, 0.625])
    sweeps = {
        1: [("none", 0.0, "replace", 0.0, 0.0, [0, 0, 1, 0, 0, 0]), ("all", 0.0, "replace", 0.0, 1.0, [1, 1, 1, 0, 1, 1]),
            ("logp_diff", -0.5, "replace", 0.0, 0.02, [1, 0, 1, 0, 1, 0]), ("logp_diff", 0.0, "replace", 0.0, 0.1, [1, 1, 1, 0, 1, 1]),
            ("logp_diff", -0.5, "extrapolate", 0.1, 0.02, [1, 1, 1, 0, 1, 0])],
        2: [("none", 0.0, "replace", 0.0, 0.0, [1, 1, 1, 1, 0, 0]), ("all", 0.0, "replace", 0.0, 1.0, [0, 0, 0, 0, 0, 0]),
            ("logp_diff", -0.5, "replace", 0.0, 0.05, [0, 0, 1, 0, 0, 0]),
            ("logp_diff", -0.5, "extrapolate", 0.1, 0.05, [0, 1, 1, 0, 0, 0])],
        3: [("none", 0.0, "replace", 0.0, 0.0, [1, 0, 0, 0, 0, 0]), ("all", 0.0, "replace", 0.0, 1.0, [1, 1, 0, 1, 1, 0]),
            ("logp_diff", -0.5, "replace", 0.0, 0.04, [1, 1, 0, 0, 1, 0]), ("logp_diff", 0.0, "replace", 0.0, 0.2, [1, 1, 0, 1, 1, 0]),
            ("logp_diff", -0.5, "extrapolate", 0.1, 0.04, [1, 1, 0, 1, 1, 0])],
    }
    for seed, points in sweeps.items():
        _write_sweep(tmp_path, "dapo", seed, points)
    rec = replacement_section(study)
    assert rec["rule"] == REPLACEMENT_RULE and rec["used_seeds"] == [1, 3]
    [excluded] = rec["excluded"]
    assert excluded["seed"] == 2 and excluded["rl_avg_at_n"] == 0.25 and excluded["base_avg_at_n"] == 0.5 and "≤ base" in excluded["reason"]
    assert rec["per_seed"]["1"]["gain"] == pytest.approx(0.25) and rec["per_seed"]["2"]["gain"] == pytest.approx(-0.25)
    # the curve: mean over the used seeds of the per-prompt accuracies, nested bootstrap over the same groups
    def prompts(correct):
        return [np.mean(correct[2 * i: 2 * i + 2]) for i in range(3)]
    [(tau_a, pa), (tau_b, pb)] = [(p["tau"], p) for p in rec["curve"]["logp_diff"]]
    assert (tau_a, tau_b) == (-0.5, 0.0)
    assert pa["accuracy"]["mean"] == pytest.approx((np.mean([1, 0, 1, 0, 1, 0]) + np.mean([1, 1, 0, 0, 1, 0])) / 2)
    assert pa["replacement_ratio"]["mean"] == pytest.approx(0.03)
    groups = [prompts(sweeps[1][2][5]), prompts(sweeps[3][2][5])]
    assert pa["accuracy"]["ci95"] == pytest.approx(list(_naive_nested(groups, 300, 2001)))  # point 1 of the sorted grid
    base, rl = np.mean([1 / 6, 1 / 6]), np.mean([5 / 6, 4 / 6])
    assert rec["base_accuracy"]["mean"] == pytest.approx(base) and rec["rl_accuracy"]["mean"] == pytest.approx(rl)
    target = base + 0.9 * (rl - base)
    assert rec["target_accuracy"] == pytest.approx(target) and rec["rl_above_base"]
    assert rec["ratio"] == {"logp_diff": pytest.approx(0.15)}  # τ = 0: mean accuracy 0.75 ≥ target 0.69, mean ratio 0.15
    # extrapolation uses every seed (no rule): mean of the three seeds' γ accuracies
    extra = extrapolation_section(study)["dapo"]
    assert extra["seeds"] == [1, 2, 3] and set(extra["per_seed"]) == {"1", "2", "3"}
    assert extra["gamma"]["0.1"]["mean"] == pytest.approx(np.mean([4 / 6, 2 / 6, 4 / 6]))
    assert extra["per_seed"]["2"]["gamma"]["0.1"] == pytest.approx(2 / 6)
    gamma_groups = [prompts(sweeps[s][-1][5]) for s in (1, 2, 3)]
    assert extra["gamma"]["0.1"]["ci95"] == pytest.approx(nested_mean_ci(gamma_groups, 300, seed=4002)["ci95"])
    plot_fig1c(rec, tmp_path / "fig1c.png")
    plot_fig4({"dapo": extra}, tmp_path / "fig4.png", -0.5)
    for name in ("fig1c.png", "fig4.png"):
        with Image.open(tmp_path / name) as im:
            im.verify()
    md = "\n".join(_seed_sections_markdown({"analysis": {}, "replacement": rec, "extrapolation": {"dapo": extra}, "settings": study.spec.fingerprint()}))
    assert "seed 2 excluded: RL avg@n 25.0 ≤ base 50.0" in md and "Over seeds [1, 3]" in md


def test_no_seed_beating_the_base_means_no_recovery_curve_and_says_so(tmp_path):
    from reweight.study.report import _seed_sections_markdown, replacement_section

    study = _synthetic_study(tmp_path, [1, 2], [0.375, 0.5])  # below and equal to the base's 0.5
    for seed in (1, 2):
        _write_sweep(tmp_path, "dapo", seed, [("none", 0.0, "replace", 0.0, 0.0, [1, 0, 1, 0, 1, 0]),
                                              ("all", 0.0, "replace", 0.0, 1.0, [1, 1, 1, 1, 1, 1])])
    rec = replacement_section(study)
    assert rec["used_seeds"] == [] and [e["seed"] for e in rec["excluded"]] == [1, 2] and rec["curve"] == {}
    md = "\n".join(_seed_sections_markdown({"analysis": {}, "replacement": rec, "extrapolation": {}, "settings": study.spec.fingerprint()}))
    assert "No dapo seed's model beats the base" in md and "seed 1 excluded: RL avg@n 37.5 ≤ base 50.0" in md
    assert "seed 2 excluded: RL avg@n 50.0 ≤ base 50.0" in md


def test_each_seed_gets_its_own_slice_of_the_section_prompt_budget(tmp_path):
    import pandas as pd

    from reweight.study.pipeline import Study
    from reweight.study.spec import StudySpec

    data = tmp_path / "test.parquet"
    pd.DataFrame({"q": [f"q{i}" for i in range(10)]}).to_parquet(data)
    study = Study(StudySpec.smoke(seeds=[5, 7, 9], test_limit=7), tmp_path / "study")
    study.test_data = str(data)
    # 8 prompts over 3 seeds: 2 each, seed i from problem 2i, within the first test_limit = 7 problems
    assert [study.seed_prompts(8, s) for s in (5, 7, 9)] == [(0, 2), (2, 2), (4, 2)]
    assert [study.seed_prompts(15, s) for s in (5, 7, 9)] == [(0, 5), (5, 5), (3, 5)]  # wraps around the 7 problems
    assert study.seed_prompts(2, 9) == (2, 1)  # fewer prompts than seeds: one each
    got = pd.read_parquet(study._prompt_subset(15, 7))["q"].tolist()
    assert got == ["q5", "q6", "q0", "q1", "q2"]
