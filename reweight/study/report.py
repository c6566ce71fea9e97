"""The study's report: ``report.md``, ``report.json`` and the figures, computed from the step outputs.

Everything here reads files the steps wrote (reweight-eval results, verl's file-logger metrics,
reweight-analyze summaries and token tables, reweight-decode sweep tables, support JSON); nothing is
typed in. The verdict of each arm against ``dapo`` is the paired difference in avg@n over seeds and
test problems with its bootstrap 95% interval (:mod:`reweight.study.stats`), phrased by
:func:`reweight.study.stats.verdict`; a section whose inputs are missing says so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from reweight.io import save_figure_atomic, write_json_atomic, write_text_atomic
from reweight.study.spec import BASELINE_ARM, PAIRED_SAMPLING
from reweight.study.stats import (
    mean_ci,
    nested_mean_ci,
    paired_difference,
    pass_at_k_matrix,
    results_matrix,
    seed_correlation,
    seeds_to_resolve,
    unseeded_difference,
    verdict,
)


def _half(ci: Sequence[float]) -> float:
    return (ci[1] - ci[0]) / 2

if TYPE_CHECKING:
    from reweight.study.pipeline import Study

FIGURES = ("training_curves.png", "pass_at_k.png", "fig1b_histograms.png", "fig1c_replacement.png", "fig4_extrapolation.png")
RECOVERY = 0.9  # Fig. 1c: the replacement ratio at which base + 0.9·(RL − base) accuracy is reached
HIST_METRICS = ("delta_logp", "entropy_rl", "kl_rl_base")
SUPPORT_KEYS = (
    "preservation", "shrinkage", "expansion", "neither", "SRR", "NDR", "SDS", "NSCR", "pass_at_k_base", "pass_at_k_rl",
    "token_entropy_base", "token_entropy_rl", "answer_entropy_base", "answer_entropy_rl",
)


def _ks(n: int) -> list[int]:
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def _figure(*args, **kwargs):
    """A matplotlib figure on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def _save(fig, path: Path, legend_size: int = 8) -> None:
    """Grid and legend on every axis, then the PNG written atomically and the figure closed."""
    import matplotlib.pyplot as plt

    for ax in fig.axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=legend_size)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)


def _pct(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _ci(entry: Mapping[str, Any]) -> str:
    lo, hi = entry["ci95"]
    return f"{_pct(entry['mean'])} [{_pct(lo)}, {_pct(hi)}]"


# ---------------------------------------------------------------------------------------- accuracy


def accuracy_section(study: "Study") -> dict[str, Any]:
    """avg@n and pass@k per arm (and the base) with intervals, and each arm vs ``dapo``."""
    from reweight.evaluation.records import read_results

    spec = study.spec
    base_results = read_results(study.eval_path(None))[1]
    uids = sorted(r.uid for r in base_results)
    out: dict[str, Any] = {"n": spec.n, "arms": {}, "comparisons": [], "base": {}}
    ks = _ks(spec.n)

    def summarise(runs_results, seed_offset: int) -> tuple[dict[str, Any], np.ndarray]:
        _, n, c = results_matrix(runs_results, uids)
        acc = c / n
        entry = {"avg_at_n": mean_ci(acc, spec.bootstrap, seed=seed_offset), "pass_at_k": {}}
        for k in ks:
            entry["pass_at_k"][str(k)] = mean_ci(pass_at_k_matrix(n, c, k), spec.bootstrap, seed=seed_offset + k)
        return entry, acc

    out["base"], base_acc = summarise([base_results], 0)
    out["base"]["results_files"] = [str(study.eval_path(None).relative_to(study.out))]
    accs: dict[str, np.ndarray] = {}
    for i, arm in enumerate(spec.arms):
        runs = [r for r in study.runs if r.arm == arm]
        entry, accs[arm] = summarise([read_results(study.eval_path(r))[1] for r in runs], 1000 * (i + 1))
        entry.update(
            overrides=list(spec.arms[arm]), seeds=[r.seed for r in runs],
            results_files=[str(study.eval_path(r).relative_to(study.out)) for r in runs],
            # what RL gained: each seed's model minus the base on the same problems, resampled as above
            vs_base=mean_ci(accs[arm] - base_acc, spec.bootstrap, seed=500 + i),
            per_seed_avg_at_n=[float(x) for x in accs[arm].mean(axis=1)],
        )
        out["arms"][arm] = entry
    for arm in spec.arms:
        if arm == BASELINE_ARM:
            continue
        diff = paired_difference(accs[arm], accs[BASELINE_ARM], spec.bootstrap, seed=7)
        seeds = accs[arm].shape[0]
        out["comparisons"].append({
            "arm": arm, "baseline": BASELINE_ARM, **diff,
            "half_width": _half(diff["ci95"]),
            # how much of a run's luck the two arms share at a seed (what pairing buys)
            "seed_correlation": seed_correlation(accs[arm], accs[BASELINE_ARM]),
            # the half-width the same runs would give with the arms' seeds resampled independently
            "half_width_unpaired": _half(unseeded_difference(accs[arm], accs[BASELINE_ARM], spec.bootstrap, seed=7)["ci95"]),
            "seeds_to_resolve": seeds_to_resolve(diff["ci95"], seeds),  # ±TARGET_RESOLUTION, projected
            "verdict": verdict(arm, BASELINE_ARM, diff["delta"], diff["ci95"], seeds=seeds),
        })
    return out


def plot_pass_at_k(acc: Mapping[str, Any], path: Path) -> None:
    fig, ax = _figure(figsize=(6, 4))
    curves = {"base": acc["base"], **acc["arms"]}
    for name, entry in curves.items():
        ks = sorted(int(k) for k in entry["pass_at_k"])
        mean = [entry["pass_at_k"][str(k)]["mean"] for k in ks]
        lo = [entry["pass_at_k"][str(k)]["ci95"][0] for k in ks]
        hi = [entry["pass_at_k"][str(k)]["ci95"][1] for k in ks]
        line = ax.plot(ks, mean, marker="o", label=name, linestyle="--" if name == "base" else "-")[0]
        ax.fill_between(ks, lo, hi, color=line.get_color(), alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k (test split)")
    ax.set_title("pass@k, mean over seeds, 95% bootstrap band")
    _save(fig, path)


# ---------------------------------------------------------------------------------------- training


def read_metrics(run_root: Path) -> dict[int, dict[str, Any]]:
    """verl's file-logger records of a run by step (earlier attempts first, so the last attempt wins per step)."""
    from reweight.train import read_metrics as read_file

    steps: dict[int, dict[str, Any]] = {}
    for path in [*sorted(run_root.glob("metrics.part*.jsonl")), run_root / "metrics.jsonl"]:
        for rec in read_file(path):
            steps.setdefault(int(rec["step"]), {}).update(rec["data"])
    return steps


def training_section(study: "Study") -> dict[str, Any]:
    """Validation accuracy and training reward per step, per run and per arm (mean, min, max over seeds)."""
    from reweight.train import validation_curve

    out: dict[str, Any] = {}
    for arm in study.spec.arms:
        per_seed = {}
        for r in (r for r in study.runs if r.arm == arm):
            records = read_metrics(r.root)
            # reweight-train's own rule for the validation metric (val-core/<source>/acc/mean@N)
            curves = validation_curve([{"step": s, "data": m} for s, m in sorted(records.items())])
            val_key = sorted(curves)[0] if curves else None
            per_seed[str(r.seed)] = {
                "val_accuracy": dict(curves.get(val_key, [])),
                "reward": {s: m["critic/score/mean"] for s, m in sorted(records.items()) if "critic/score/mean" in m},
                "val_key": val_key,
            }
        out[arm] = per_seed
    return out


def plot_training(training: Mapping[str, Any], path: Path) -> None:
    fig, axes = _figure(1, 2, figsize=(11, 4))
    for ax, metric, label in ((axes[0], "val_accuracy", "validation accuracy"), (axes[1], "reward", "training reward (critic/score/mean)")):
        for arm, seeds in training.items():
            steps = sorted({int(s) for v in seeds.values() for s in v[metric]})
            if not steps:
                continue
            vals = np.array([[v[metric].get(s, np.nan) for s in steps] for v in seeds.values()], dtype=float)
            with np.errstate(all="ignore"):
                mean = np.nanmean(vals, axis=0)
            line = ax.plot(steps, mean, marker="o", markersize=3, label=f"{arm} ({len(seeds)} seeds)")[0]
            if len(seeds) > 1:
                ax.fill_between(steps, np.nanmin(vals, axis=0), np.nanmax(vals, axis=0), color=line.get_color(), alpha=0.15)
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
        ax.set_title(f"{label}: mean, band = min..max over seeds", fontsize=9)
    _save(fig, path)


# ---------------------------------------------------------------------------------------- per-seed sections
#
# The direction analysis, the replacement sweep and the extrapolation sweep run once per seed of the arms
# concerned, each seed on its own slice of test prompts (Study.seed_prompts). Every quantity is reported as
# the mean over seeds with a 95% percentile bootstrap interval (reweight.study.stats.nested_mean_ci): over
# seeds and, within each seed, its prompts where per-prompt records exist (decoding accuracy), over seeds
# alone for quantities of a whole token population (the analysis' quantiles, the replacement ratio). The
# per-seed values are in report.json under ``per_seed``.


def _seed_ci(values: Sequence[float], resamples: int, seed: int) -> dict[str, Any]:
    """Mean over seeds and the percentile bootstrap interval over seeds of one value per seed."""
    return nested_mean_ci([[v] for v in values], resamples, seed=seed)


def _step_info(study: "Study", key: str) -> dict[str, Any]:
    path = study.out / "steps" / f"{key}.json"
    return json.loads(path.read_text()) if path.exists() else {}


# Scalars of one reweight-analyze summary reported per seed: name → (metric, statistic) or |Δlog p| threshold.
ANALYSIS_VALUES: dict[str, tuple[str, str]] = {
    "delta_logp_q05": ("delta_logp", "0.05"), "delta_logp_q50": ("delta_logp", "0.5"), "delta_logp_q95": ("delta_logp", "0.95"),
    "frac_abs_delta_logp_above_0.5": ("abs_delta_logp_above", "0.5"), "frac_abs_delta_logp_above_1.0": ("abs_delta_logp_above", "1.0"),
    "kl_rl_base_mean": ("kl_rl_base", "mean"), "entropy_rl_mean": ("entropy_rl", "mean"),
}


def analysis_values(summary: Mapping[str, Any]) -> dict[str, float | None]:
    """The :data:`ANALYSIS_VALUES` of one reweight-analyze ``summary.json`` (over both sources' tokens)."""
    out: dict[str, float | None] = {}
    for name, (metric, stat) in ANALYSIS_VALUES.items():
        if metric == "abs_delta_logp_above":
            out[name] = (summary.get(metric) or {}).get("all", {}).get(stat)
            continue
        entry = summary.get("metrics", {}).get(metric, {}).get("all", {})
        out[name] = entry.get(stat) if stat == "mean" else (entry.get("quantiles") or {}).get(stat)
    return out


def analysis_section(study: "Study") -> dict[str, Any]:
    """Per arm: each seed's analysis values (:data:`ANALYSIS_VALUES`) and their mean over seeds with a 95% interval."""
    out = {}
    for i, arm in enumerate(study.spec.arms):
        per_seed = {}
        for r in (r for r in study.runs if r.arm == arm):
            path = study.out / "analysis" / arm / f"s{r.seed}" / "summary.json"
            if path.exists():
                summary = json.loads(path.read_text())
                per_seed[str(r.seed)] = {"n_tokens": summary.get("n_tokens"), **analysis_values(summary)}
        if not per_seed:
            continue
        stats = {}
        for j, name in enumerate(ANALYSIS_VALUES):
            vals = [v[name] for v in per_seed.values() if v[name] is not None]
            if vals:
                stats[name] = _seed_ci(vals, study.spec.bootstrap, seed=100 * i + j)
        out[arm] = {"seeds": [int(s) for s in per_seed], "n_tokens": sum(v["n_tokens"] or 0 for v in per_seed.values()),
                    "mean_ci": stats, "per_seed": per_seed}
    return out


def plot_fig1b(study: "Study", path: Path) -> bool:
    """Histograms of Δlog p, RL entropy and KL over the tokens of each arm's own responses (and the base's), all seeds pooled."""
    import pyarrow.parquet as pq

    from reweight.analysis.report import histogram_figure

    values: dict[str, dict[str, np.ndarray]] = {}
    for arm in study.spec.arms:
        parts = sorted((study.out / "analysis" / arm).glob("s*/tokens.parquet"))
        if not parts:
            continue
        tables = [pq.read_table(p, columns=["source", *HIST_METRICS]) for p in parts]
        source = np.concatenate([np.asarray(t.column("source").to_pylist(), dtype=object) for t in tables])
        cols = {m: np.concatenate([t.column(m).to_numpy() for t in tables]) for m in HIST_METRICS}
        if "base" not in values and arm == BASELINE_ARM:
            values["base"] = {m: cols[m][source == "base"] for m in HIST_METRICS}
        values[arm] = {m: cols[m][source == "rl"] for m in HIST_METRICS}
    if not values:
        return False
    import matplotlib.pyplot as plt

    fig = histogram_figure(values, HIST_METRICS)
    fig.suptitle("Fig. 1(b): base vs each arm's model, on each model's own responses (test prompts, all seeds pooled)", fontsize=9)
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------- decoding


def _sweep_dir(study: "Study", label: str, seed: int) -> Path:
    return study.out / "decode" / label / f"s{seed}"


def _sweep_rows(study: "Study", label: str, seed: int) -> list[dict[str, Any]]:
    path = _sweep_dir(study, label, seed) / "results.json"
    return json.loads(path.read_text()) if path.exists() else []


def prompt_accuracies(sweep_dir: Path, key: str) -> list[float]:
    """Per prompt, the fraction of its samples that are correct at one grid point (``points/<key>.samples.jsonl``), ``(P,)``."""
    by_prompt: dict[int, list[bool]] = {}
    for line in (sweep_dir / "points" / f"{key}.samples.jsonl").read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            by_prompt.setdefault(int(rec["prompt_index"]), []).append(bool(rec["correct"]))
    return [sum(v) / len(v) for _, v in sorted(by_prompt.items())]


def _point(rows: Sequence[Mapping[str, Any]], criterion: str, mode: str = "replace", tau: float | None = None,
           gamma: float | None = None) -> Mapping[str, Any] | None:
    for r in rows:
        if r["criterion"] == criterion and r["mode"] == mode and (tau is None or abs(r["tau"] - tau) < 1e-9) \
                and (gamma is None or abs(r["gamma"] - gamma) < 1e-9):
            return r
    return None


def _point_ci(study: "Study", label: str, seeds: Sequence[int], key: str, rng_seed: int) -> dict[str, Any]:
    """Accuracy at one grid point over ``seeds``: mean over seeds, nested bootstrap over seeds and prompts."""
    groups = [prompt_accuracies(_sweep_dir(study, label, s), key) for s in seeds]
    return nested_mean_ci(groups, study.spec.bootstrap, seed=rng_seed)


def recovery_ratios(rows: Sequence[Mapping[str, Any]], fraction: float = RECOVERY) -> dict[str, Any]:
    """Per criterion, the smallest replacement ratio whose accuracy reaches base + fraction·(RL − base).

    ``None`` when no grid point of the criterion reaches it. Base is criterion ``none``, RL ``all``.
    """
    base = next((r["accuracy"] for r in rows if r["criterion"] == "none"), None)
    rl = next((r["accuracy"] for r in rows if r["criterion"] == "all" and r["mode"] == "replace"), None)
    if base is None or rl is None:
        return {}
    target = base + fraction * (rl - base)
    gap = rl > base  # with no gain of RL over base on these prompts there is nothing to recover
    out: dict[str, Any] = {"base_accuracy": base, "rl_accuracy": rl, "target_accuracy": target if gap else None,
                           "rl_above_base": gap, "ratio": {}}
    for crit in sorted({r["criterion"] for r in rows if r["mode"] == "replace"} - {"none", "all"}):
        hits = [r["replacement_ratio"] for r in rows if r["criterion"] == crit and r["mode"] == "replace" and r["accuracy"] >= target]
        out["ratio"][crit] = min(hits) if hits and gap else None
    return out


REPLACEMENT_RULE = (
    "a seed's dapo model enters Fig. 1c when its avg@n minus the base's avg@n on the study's test evaluation "
    "(eval/dapo/s<seed>.jsonl vs eval/base.jsonl: the same problems, n samples each) is > 0"
)


def rl_beats_base(rl_avg_at_n: float, base_avg_at_n: float) -> bool:
    """:data:`REPLACEMENT_RULE`: the RL model's test avg@n exceeds the base's (no gap, nothing to recover)."""
    return rl_avg_at_n - base_avg_at_n > 0


def select_replacement_seeds(per_seed: Mapping[str, Mapping[str, Any]]) -> tuple[list[int], list[dict[str, Any]]]:
    """``(used, excluded)`` seeds of Fig. 1c from each seed's ``rl_avg_at_n``, ``base_avg_at_n`` and ``has_grid``.

    A seed is used when :func:`rl_beats_base` holds and its sweep has the replacement grid; every other seed
    is listed in ``excluded`` with its numbers and the reason.
    """
    used, excluded = [], []
    for seed, e in per_seed.items():
        rl, base = e["rl_avg_at_n"], e["base_avg_at_n"]
        if not rl_beats_base(rl, base):
            excluded.append({"seed": int(seed), "rl_avg_at_n": rl, "base_avg_at_n": base,
                             "reason": f"RL avg@n {_pct(rl)} ≤ base {_pct(base)} on the test evaluation"})
        elif not e.get("has_grid"):
            excluded.append({"seed": int(seed), "rl_avg_at_n": rl, "base_avg_at_n": base, "reason": "no replacement sweep output"})
        else:
            used.append(int(seed))
    return used, excluded


def replacement_section(study: "Study") -> dict[str, Any]:
    """Fig. 1c over the dapo seeds whose RL model beats the base (:data:`REPLACEMENT_RULE`).

    Per seed: both avg@n, the decision, the sweep's own base / RL accuracy and its recovery ratios. Over the
    used seeds: per criterion and τ the mean accuracy (nested bootstrap interval) and mean replacement ratio
    (interval over seeds); the recovery ratio is read off these mean curves (:func:`recovery_ratios`).
    """
    spec = study.spec
    base_avg = study.avg_at_n(None)
    per_seed: dict[str, dict[str, Any]] = {}
    for seed in spec.seeds:
        rl_avg = study.avg_at_n(study.run_of(BASELINE_ARM, seed))
        rows = _sweep_rows(study, "dapo", seed)
        rec = recovery_ratios(rows) if rows else {}
        per_seed[str(seed)] = {
            "rl_avg_at_n": rl_avg, "base_avg_at_n": base_avg, "gain": rl_avg - base_avg,
            "has_grid": bool(rows) and bool(_step_info(study, f"decode_dapo_s{seed}").get("replacement_grid")),
            "sweep_base_accuracy": rec.get("base_accuracy"), "sweep_rl_accuracy": rec.get("rl_accuracy"),
            "recovery_ratio": rec.get("ratio"),
        }
    used, excluded = select_replacement_seeds(per_seed)
    out: dict[str, Any] = {"rule": REPLACEMENT_RULE, "used_seeds": used, "excluded": excluded, "per_seed": per_seed, "curve": {}}
    if not used:
        return out
    rows_by_seed = {s: _sweep_rows(study, "dapo", s) for s in used}
    first = rows_by_seed[used[0]]
    points = sorted({(r["criterion"], r["tau"]) for r in first if r["mode"] == "replace"})
    mean_rows = []
    for j, (crit, tau) in enumerate(points):
        seed_rows = [_point(rows_by_seed[s], crit, tau=None if crit in ("none", "all") else tau) for s in used]
        if any(r is None for r in seed_rows):
            continue
        acc = _point_ci(study, "dapo", used, seed_rows[0]["key"], rng_seed=2000 + j)
        ratio = _seed_ci([r["replacement_ratio"] for r in seed_rows], spec.bootstrap, seed=3000 + j)
        mean_rows.append({"criterion": crit, "tau": tau, "mode": "replace", "accuracy": acc["mean"], "replacement_ratio": ratio["mean"]})
        if crit == "none":
            out["base_accuracy"] = acc
        elif crit == "all":
            out["rl_accuracy"] = acc
        else:
            out["curve"].setdefault(crit, []).append({"tau": tau, "accuracy": acc, "replacement_ratio": ratio})
    rec = recovery_ratios(mean_rows)
    out.update(target_accuracy=rec.get("target_accuracy"), rl_above_base=rec.get("rl_above_base"), ratio=rec.get("ratio", {}))
    return out


def _errorbar(ax, xs, entries, **kwargs):
    """Means of ``entries`` ({"mean", "ci95"}) at ``xs`` with their intervals as error bars; the line."""
    ys = np.array([e["mean"] for e in entries], dtype=float)
    lo = ys - np.array([e["ci95"][0] for e in entries], dtype=float)
    hi = np.array([e["ci95"][1] for e in entries], dtype=float) - ys
    return ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, **kwargs)


def plot_fig1c(rec: Mapping[str, Any], path: Path) -> None:
    fig, ax = _figure(figsize=(6, 4))
    for crit, pts in sorted(rec.get("curve", {}).items()):
        pts = sorted(pts, key=lambda p: p["replacement_ratio"]["mean"])
        xs = [p["replacement_ratio"]["mean"] for p in pts]
        xerr = [[x - p["replacement_ratio"]["ci95"][0] for x, p in zip(xs, pts)], [p["replacement_ratio"]["ci95"][1] - x for x, p in zip(xs, pts)]]
        _errorbar(ax, xs, [p["accuracy"] for p in pts], xerr=xerr, label=crit)
    for key, color, label in (("base_accuracy", "gray", "base"), ("rl_accuracy", "black", "RL (dapo)")):
        if key in rec:
            ax.axhline(rec[key]["mean"], color=color, linestyle="--", label=label)
            ax.axhspan(*rec[key]["ci95"], color=color, alpha=0.1)
    if rec.get("target_accuracy") is not None:
        ax.axhline(rec["target_accuracy"], color="black", linestyle=":", label=f"{RECOVERY:.0%} recovery")
    used = rec.get("used_seeds", [])
    ax.set_xlabel("replacement ratio (fraction of generated tokens)")
    ax.set_ylabel("accuracy (test prompts)")
    ax.set_title(f"Fig. 1(c): selective replacement, base → dapo model\nmean over seeds {used}, 95% CI (accuracy: seeds and prompts)"
                 if used else "Fig. 1(c): no dapo seed beats the base; nothing to recover", fontsize=8)
    ax.set_xlim(left=0)
    _save(fig, path)


def extrapolation_section(study: "Study") -> dict[str, Any]:
    """Fig. 4 per sweep (``dapo``, ``best``): per seed the RL, replacement (τ) and γ accuracies; mean over seeds, 95% CI."""
    spec, tau = study.spec, study.spec.extrapolate_tau
    out = {}
    for i, label in enumerate(("dapo", "best")):
        per_seed, keys, arm = {}, {}, None
        for seed in spec.seeds:
            rows = _sweep_rows(study, label, seed)
            if not rows:
                continue
            arm = _step_info(study, f"decode_{label}_s{seed}").get("arm", arm or label)
            rl, rep = _point(rows, "all"), _point(rows, "logp_diff", tau=tau)
            gam = {str(r["gamma"]): r for r in rows if r["mode"] == "extrapolate"}
            per_seed[str(seed)] = {"rl_accuracy": rl and rl["accuracy"], "replace_accuracy": rep and rep["accuracy"],
                                   "gamma": {g: r["accuracy"] for g, r in gam.items()}}
            keys[seed] = {"rl": rl and rl["key"], "replace": rep and rep["key"], **{g: r["key"] for g, r in gam.items()}}
        if not per_seed:
            continue
        seeds = sorted(keys)

        def ci(name: str, j: int) -> dict[str, Any] | None:
            if any(keys[s].get(name) is None for s in seeds):
                return None
            groups = [prompt_accuracies(_sweep_dir(study, label, s), keys[s][name]) for s in seeds]
            return nested_mean_ci(groups, spec.bootstrap, seed=4000 + 100 * i + j)

        gammas = sorted({g for s in seeds for g in keys[s] if g not in ("rl", "replace")}, key=float)
        out[label] = {
            "arm": arm, "seeds": seeds, "rl_accuracy": ci("rl", 0), "replace_accuracy": ci("replace", 1),
            "gamma": {g: ci(g, 2 + j) for j, g in enumerate(gammas)}, "per_seed": per_seed,
        }
    return out


def plot_fig4(extra: Mapping[str, Any], path: Path, tau: float) -> None:
    fig, ax = _figure(figsize=(6, 4))
    for k, (label, entry) in enumerate(extra.items()):
        gammas = sorted(float(g) for g, e in entry["gamma"].items() if e is not None)
        pts = [(0.0, entry["replace_accuracy"])] if entry["replace_accuracy"] else []
        pts += [(g, entry["gamma"][str(g)]) for g in gammas]
        offset = 0.004 * k  # the two sweeps' error bars side by side
        line = _errorbar(ax, [x + offset for x, _ in pts], [e for _, e in pts],
                         label=f"{entry['arm']}: selective extrapolation (τ={tau}), {len(entry['seeds'])} seed(s)")
        if entry["rl_accuracy"] is not None:
            color = line[0].get_color()
            ax.axhline(entry["rl_accuracy"]["mean"], color=color, linestyle="--", label=f"{entry['arm']}: RL model alone")
            ax.axhspan(*entry["rl_accuracy"]["ci95"], color=color, alpha=0.08)
    ax.set_xlabel("γ (γ = 0: plain replacement)")
    ax.set_ylabel("accuracy (test prompts)")
    ax.set_title("Fig. 4: test-time extrapolation π ∝ π_RL·exp(γ Δlog p)\nmean over seeds, 95% CI over seeds and prompts", fontsize=9)
    _save(fig, path, legend_size=7)


# ---------------------------------------------------------------------------------------- support


def support_section(study: "Study") -> dict[str, Any]:
    """Mean over seeds of each arm's support ratios and entropies (from each run's support JSON)."""
    out = {}
    for arm in study.spec.arms:
        rows = []
        for r in (r for r in study.runs if r.arm == arm):
            path = study.out / "support" / arm / f"s{r.seed}.json"
            if path.exists():
                rows.append(json.loads(path.read_text())["aggregate"])
        if not rows:
            continue
        out[arm] = {
            k: float(np.nanmean([np.nan if row["average"].get(k) is None else row["average"][k] for row in rows]))
            for k in SUPPORT_KEYS
            if any(row["average"].get(k) is not None for row in rows)
        }
        out[arm]["seeds"] = len(rows)
    return out


# ---------------------------------------------------------------------------------------- assembly


def _cell(entry: Mapping[str, Any] | None, scale: float = 100.0, fmt: str = ".1f") -> str:
    """``mean [lo, hi]`` of a {"mean", "ci95"} entry (scaled: 100 for %), or — when missing."""
    if not entry or entry.get("mean") is None:
        return "—"
    lo, hi = entry["ci95"]
    return f"{scale * entry['mean']:{fmt}} [{scale * lo:{fmt}}, {scale * hi:{fmt}}]"


def _seed_sections_markdown(report: Mapping[str, Any]) -> list[str]:
    """The direction analysis, replacement and extrapolation sections: mean over seeds [95% interval], seeds named."""
    lines = ["## Direction analysis (Fig. 1b)", ""]
    if report["analysis"]:
        lines.append(
            "`reweight-analyze` of the base against every seed's model, each seed on its own test prompts; mean over "
            "seeds [95% percentile bootstrap interval over seeds] (one seed: no interval). Per-seed values: report.json "
            "`analysis.<arm>.per_seed`. Histograms: all seeds' tokens pooled."
        )
        lines += ["", "| arm | seeds | tokens | Δlog p q05 | q50 | q95 | % \\|Δlog p\\| > 0.5 | > 1.0 | mean KL(RL‖base) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for arm, a in report["analysis"].items():
            m = a["mean_ci"]
            cells = [_cell(m.get(f"delta_logp_q{q}"), 1.0, ".2f") for q in ("05", "50", "95")]
            cells += [_cell(m.get("frac_abs_delta_logp_above_0.5")), _cell(m.get("frac_abs_delta_logp_above_1.0")),
                      _cell(m.get("kl_rl_base_mean"), 1.0, ".3f")]
            lines.append(f"| {arm} | {a['seeds']} | {a['n_tokens']} | " + " | ".join(cells) + " |")
        lines += ["", "![Fig. 1b](fig1b_histograms.png)"]
    else:
        lines.append("No analysis output.")
    lines += ["", "## Selective token replacement (Fig. 1c)", ""]
    rec = report["replacement"]
    if rec and rec.get("per_seed"):
        lines.append(f"Rule: {rec['rule']}.")
        lines += ["", "| dapo seed | avg@n RL | avg@n base | gain | used | sweep base | sweep RL |", "|---|---|---|---|---|---|---|"]
        for seed, e in rec["per_seed"].items():
            used = "yes" if int(seed) in rec["used_seeds"] else "no"
            lines.append(f"| {seed} | {_pct(e['rl_avg_at_n'])} | {_pct(e['base_avg_at_n'])} | {100 * e['gain']:+.1f} | {used} | "
                         f"{_pct(e['sweep_base_accuracy'])} | {_pct(e['sweep_rl_accuracy'])} |")
        lines.append("")
        for ex in rec["excluded"]:
            lines.append(f"- seed {ex['seed']} excluded: {ex['reason']}.")
        if rec["excluded"]:
            lines.append("")
        if not rec["used_seeds"]:
            lines.append("No dapo seed's model beats the base on the test evaluation: there is no gap for replacement to "
                         "recover, and no recovery curve or ratio is reported.")
        else:
            lines.append(
                f"Over seeds {rec['used_seeds']} (mean [95% interval over seeds and prompts]): base {_cell(rec.get('base_accuracy'))}, "
                f"RL {_cell(rec.get('rl_accuracy'))} on the sweep's prompts and sampling (top-p {report['settings']['decode_top_p']})."
            )
            if not rec.get("rl_above_base"):
                lines.append("On the sweep's prompts the mean RL accuracy is not above the mean base accuracy, so no recovery ratio is reported.")
            else:
                lines.append(f"Replacement ratio at which the mean curve reaches base + {RECOVERY:.0%} of the gap ({_pct(rec['target_accuracy'])}):")
                lines += [f"- `{c}`: " + ("not reached on the grid" if r is None else f"{100 * r:.1f}% of tokens") for c, r in rec["ratio"].items()]
        lines += ["", "![Fig. 1c](fig1c_replacement.png)"]
    else:
        lines.append("No replacement sweep output.")
    lines += ["", "## Test-time extrapolation (Fig. 4)", ""]
    if report["extrapolation"]:
        lines.append("Accuracy on each seed's sweep prompts, mean over seeds [95% interval over seeds and prompts]; per seed in report.json.")
    for e in report["extrapolation"].values():
        gs = ", ".join(f"γ={g}: {_cell(v)}" for g, v in sorted(e["gamma"].items(), key=lambda kv: float(kv[0])))
        lines.append(f"- {e['arm']} (seeds {e['seeds']}): RL alone {_cell(e['rl_accuracy'])}, replace {_cell(e['replace_accuracy'])}, {gs}")
    if report["extrapolation"]:
        lines += ["", "![Fig. 4](fig4_extrapolation.png)"]
    return lines


def render_markdown(report: Mapping[str, Any]) -> str:
    acc, spec = report["accuracy"], report["settings"]
    n, ks = acc["n"], sorted(int(k) for k in acc["base"]["pass_at_k"])
    show_k = [k for k in ks if k in (1, n) or k == ks[len(ks) // 2]]
    lines = [
        "# Study report", "",
        f"Base config `{spec['config_name']}`; {len(spec['seeds'])} seed(s) per arm {spec['seeds']}; "
        f"test problems: {report['test_problems']} × n = {n} samples; scorer `{spec['scorer']}`. "
        + ("Rollouts of the same seed paired across arms (common random numbers). " if report.get("paired_sampling") else "")
        + "Values in %, mean over seeds of the mean over problems, [95% bootstrap interval over problems and seeds].", "",
        "## Accuracy (Table 1)", "",
        "| model | avg@" + str(n) + " | " + " | ".join(f"pass@{k}" for k in show_k)
        + " | Δ avg@n vs base | Δ avg@n vs dapo (paired) | ± paired / unpaired | seed corr. with dapo |",
        "|---|---|" + "---|" * len(show_k) + "---|---|---|---|",
    ]
    comps = {c["arm"]: c for c in acc["comparisons"]}
    for name, entry in [("base", acc["base"]), *acc["arms"].items()]:
        delta, corr, gain, halves = "—", "—", "—", "—"
        if name in comps:
            c = comps[name]
            delta = f"{100 * c['delta']:+.1f} [{100 * c['ci95'][0]:+.1f}, {100 * c['ci95'][1]:+.1f}]"
            corr = "—" if c.get("seed_correlation") is None else f"{c['seed_correlation']:.2f}"
            halves = f"{100 * c['half_width']:.1f} / {100 * c['half_width_unpaired']:.1f}"
        if "vs_base" in entry:
            g = entry["vs_base"]
            gain = f"{100 * g['mean']:+.1f} [{100 * g['ci95'][0]:+.1f}, {100 * g['ci95'][1]:+.1f}]"
        cells = [_ci(entry["avg_at_n"]), *(_ci(entry["pass_at_k"][str(k)]) for k in show_k), gain, delta, halves, corr]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Verdict", ""]
    lines += [f"- {c['verdict']}" for c in acc["comparisons"]] or ["- only the dapo arm was run: nothing to compare."]
    lines += ["", "## Training curves", "", "![training curves](training_curves.png)", ""]
    for arm, seeds in report["training"].items():
        finals = [list(v["val_accuracy"].values())[-1] for v in seeds.values() if v["val_accuracy"]]
        firsts = [list(v["val_accuracy"].values())[0] for v in seeds.values() if v["val_accuracy"]]
        if finals:
            lines.append(f"- {arm}: validation accuracy {_pct(float(np.mean(firsts)))} → {_pct(float(np.mean(finals)))} (mean over {len(finals)} seed(s))")
    lines += ["", "![pass@k](pass_at_k.png)", ""]
    lines += _seed_sections_markdown(report)
    lines += ["", "## Support (Invisible Leash), trained model vs base", ""]
    if report["support"]:
        lines.append(
            f"Per problem, its answer is in a model's support when one of the model's first k = {report['support_k']} "
            "samples is correct (the Invisible Leash estimator, docs/evaluation.md); P/S/E/O count problems "
            "(preserved, shrunk, expanded, in neither), mean over seeds."
        )
        keys = [k for k in SUPPORT_KEYS if any(k in s for s in report["support"].values())]
        lines += ["", "| arm | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for arm, s in report["support"].items():
            lines.append(f"| {arm} | " + " | ".join("—" if s.get(k) is None else f"{s[k]:.3g}" for k in keys) + " |")
    else:
        lines.append("No support output.")
    return "\n".join(lines) + "\n"


def build_report(study: "Study") -> dict[str, Any]:
    from reweight.evaluation.records import read_results

    accuracy = accuracy_section(study)
    return {
        "settings": study.spec.fingerprint(),
        "base_model": study.base_model,
        "test_data": study.test_data,
        "test_problems": len(read_results(study.eval_path(None))[1]),
        "accuracy": accuracy,
        # the keys of report.json named by the study's contract, at top level
        "n": accuracy["n"], "arms": accuracy["arms"], "base": accuracy["base"], "comparisons": accuracy["comparisons"],
        "training": training_section(study),
        "analysis": analysis_section(study),
        "replacement": replacement_section(study),
        "extrapolation": extrapolation_section(study),
        "support": support_section(study),
        "support_k": study.spec.support_k or study.spec.n,
        # whether the runs' rollouts were paired with common random numbers (hf rollout only)
        "paired_sampling": any(o == PAIRED_SAMPLING for r in study.runs for o in r.overrides),
    }


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_report(study: "Study") -> dict[str, Path]:
    """Compute the report from the step outputs; write report.md, report.json and the figures (atomic)."""
    out = study.out
    report = build_report(study)
    plot_training(report["training"], out / "training_curves.png")
    plot_pass_at_k(report["accuracy"], out / "pass_at_k.png")
    plot_fig1b(study, out / "fig1b_histograms.png")
    plot_fig1c(report["replacement"], out / "fig1c_replacement.png")
    plot_fig4(report["extrapolation"], out / "fig4_extrapolation.png", study.spec.extrapolate_tau)
    report.pop("accuracy")
    data = _finite(report)
    md = render_markdown({**data, "accuracy": {"n": data["n"], "arms": data["arms"], "base": data["base"], "comparisons": data["comparisons"]}})
    write_json_atomic(out / "report.json", data, indent=1)
    write_text_atomic(out / "report.md", md)
    return {"report.md": out / "report.md", "report.json": out / "report.json", **{f: out / f for f in FIGURES}}
