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
    paired_difference,
    pass_at_k_matrix,
    results_matrix,
    seed_correlation,
    seeds_to_resolve,
    verdict,
)

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
            "half_width": (diff["ci95"][1] - diff["ci95"][0]) / 2,
            # how much of a run's luck the two arms share at a seed (what pairing buys)
            "seed_correlation": seed_correlation(accs[arm], accs[BASELINE_ARM]),
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


# ---------------------------------------------------------------------------------------- direction


def analysis_section(study: "Study") -> dict[str, Any]:
    out = {}
    for arm in study.spec.arms:
        path = study.out / "analysis" / arm / "summary.json"
        if not path.exists():
            continue
        summary = json.loads(path.read_text())
        out[arm] = {
            "n_tokens": summary.get("n_tokens"),
            "abs_delta_logp_above": summary.get("abs_delta_logp_above", {}).get("all"),
            "quantiles": {m: summary["metrics"][m]["all"] for m in HIST_METRICS if m in summary.get("metrics", {})},
            "per_source_means": summary.get("per_source_means"),
        }
    return out


def plot_fig1b(study: "Study", path: Path) -> bool:
    """Histograms of Δlog p, RL entropy and KL over the tokens of each arm's own responses (and the base's)."""
    import pyarrow.parquet as pq

    from reweight.analysis.report import histogram_figure

    values: dict[str, dict[str, np.ndarray]] = {}
    for arm in study.spec.arms:
        tokens_path = study.out / "analysis" / arm / "tokens.parquet"
        if not tokens_path.exists():
            continue
        table = pq.read_table(tokens_path, columns=["source", *HIST_METRICS])
        source = np.asarray(table.column("source").to_pylist(), dtype=object)
        if "base" not in values and arm == BASELINE_ARM:
            values["base"] = {m: table.column(m).to_numpy()[source == "base"] for m in HIST_METRICS}
        values[arm] = {m: table.column(m).to_numpy()[source == "rl"] for m in HIST_METRICS}
    if not values:
        return False
    import matplotlib.pyplot as plt

    fig = histogram_figure(values, HIST_METRICS)
    fig.suptitle("Fig. 1(b): base vs each arm's model, on each model's own responses (test prompts)", fontsize=9)
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------- decoding


def _sweep_rows(study: "Study", label: str) -> list[dict[str, Any]]:
    path = study.out / "decode" / label / "results.json"
    return json.loads(path.read_text()) if path.exists() else []


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


def plot_fig1c(rows: Sequence[Mapping[str, Any]], recovery: Mapping[str, Any], path: Path) -> None:
    fig, ax = _figure(figsize=(6, 4))
    for crit in sorted({r["criterion"] for r in rows if r["mode"] == "replace"} - {"none", "all"}):
        pts = sorted((r["replacement_ratio"], r["accuracy"]) for r in rows if r["criterion"] == crit and r["mode"] == "replace")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=crit)
    if recovery:
        ax.axhline(recovery["base_accuracy"], color="gray", linestyle="--", label="base")
        ax.axhline(recovery["rl_accuracy"], color="black", linestyle="--", label="RL (dapo)")
        if recovery["target_accuracy"] is not None:
            ax.axhline(recovery["target_accuracy"], color="black", linestyle=":", label=f"{RECOVERY:.0%} recovery")
    ax.set_xlabel("replacement ratio (fraction of generated tokens)")
    ax.set_ylabel("accuracy (test prompts)")
    ax.set_title("Fig. 1(c): selective replacement, base → dapo model", fontsize=9)
    ax.set_xlim(left=0)
    _save(fig, path)


def extrapolation_section(study: "Study") -> dict[str, Any]:
    out = {}
    for label in ("dapo", "best"):
        rows = _sweep_rows(study, label)
        if not rows:
            continue
        step = study.out / "steps" / f"decode_{label}.json"
        arm = json.loads(step.read_text()).get("arm") if step.exists() else label
        tau = study.spec.extrapolate_tau
        out[label] = {
            "arm": arm,
            "rl_accuracy": next((r["accuracy"] for r in rows if r["criterion"] == "all" and r["mode"] == "replace"), None),
            "replace_accuracy": next((r["accuracy"] for r in rows if r["criterion"] == "logp_diff" and r["mode"] == "replace" and abs(r["tau"] - tau) < 1e-9), None),
            "gamma": {str(r["gamma"]): r["accuracy"] for r in rows if r["mode"] == "extrapolate"},
        }
    return out


def plot_fig4(extra: Mapping[str, Any], path: Path, tau: float) -> None:
    fig, ax = _figure(figsize=(6, 4))
    for label, entry in extra.items():
        gammas = sorted(float(g) for g in entry["gamma"])
        xs = [0.0] + gammas
        ys = [entry["replace_accuracy"]] + [entry["gamma"][str(g)] for g in gammas]
        line = ax.plot(xs, ys, marker="o", label=f"{entry['arm']}: selective extrapolation (τ={tau})")[0]
        if entry["rl_accuracy"] is not None:
            ax.axhline(entry["rl_accuracy"], color=line.get_color(), linestyle="--", label=f"{entry['arm']}: RL model alone")
    ax.set_xlabel("γ (γ = 0: plain replacement)")
    ax.set_ylabel("accuracy (test prompts)")
    ax.set_title("Fig. 4: test-time extrapolation π ∝ π_RL·exp(γ Δlog p)", fontsize=9)
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
        + " | Δ avg@n vs base | Δ avg@n vs dapo (paired) | seed corr. with dapo |",
        "|---|---|" + "---|" * len(show_k) + "---|---|---|",
    ]
    comps = {c["arm"]: c for c in acc["comparisons"]}
    for name, entry in [("base", acc["base"]), *acc["arms"].items()]:
        delta, corr, gain = "—", "—", "—"
        if name in comps:
            c = comps[name]
            delta = f"{100 * c['delta']:+.1f} [{100 * c['ci95'][0]:+.1f}, {100 * c['ci95'][1]:+.1f}]"
            corr = "—" if c.get("seed_correlation") is None else f"{c['seed_correlation']:.2f}"
        if "vs_base" in entry:
            g = entry["vs_base"]
            gain = f"{100 * g['mean']:+.1f} [{100 * g['ci95'][0]:+.1f}, {100 * g['ci95'][1]:+.1f}]"
        cells = [_ci(entry["avg_at_n"]), *(_ci(entry["pass_at_k"][str(k)]) for k in show_k), gain, delta, corr]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Verdict", ""]
    lines += [f"- {c['verdict']}" for c in acc["comparisons"]] or ["- only the dapo arm was run: nothing to compare."]
    lines += ["", "## Training curves", "", "![training curves](training_curves.png)", ""]
    for arm, seeds in report["training"].items():
        finals = [list(v["val_accuracy"].values())[-1] for v in seeds.values() if v["val_accuracy"]]
        firsts = [list(v["val_accuracy"].values())[0] for v in seeds.values() if v["val_accuracy"]]
        if finals:
            lines.append(f"- {arm}: validation accuracy {_pct(float(np.mean(firsts)))} → {_pct(float(np.mean(finals)))} (mean over {len(finals)} seed(s))")
    lines += ["", "![pass@k](pass_at_k.png)", "", "## Direction analysis (Fig. 1b)", ""]
    if report["analysis"]:
        lines += ["| arm | tokens | Δlog p q05 / q50 / q95 | frac. \\|Δlog p\\| > 0.5 | > 1.0 | mean KL(RL‖base) |", "|---|---|---|---|---|---|"]
        for arm, a in report["analysis"].items():
            q = a["quantiles"].get("delta_logp", {})
            qs = q.get("quantiles", {}) if isinstance(q.get("quantiles"), dict) else {}
            qtxt = " / ".join(f"{qs[k]:.2f}" if qs.get(k) is not None else "—" for k in ("0.05", "0.5", "0.95")) if qs else "—"
            above = a.get("abs_delta_logp_above") or {}
            kl = a["quantiles"].get("kl_rl_base", {}).get("mean")
            lines.append(f"| {arm} | {a['n_tokens']} | {qtxt} | {_pct(above.get('0.5'))} | {_pct(above.get('1.0'))} | {kl if kl is None else f'{kl:.3f}'} |")
        lines += ["", "![Fig. 1b](fig1b_histograms.png)"]
    else:
        lines.append("No analysis output.")
    lines += ["", "## Selective token replacement (Fig. 1c)", ""]
    rec = report["replacement"]
    if rec and not rec["rl_above_base"]:
        lines.append(
            f"Base → dapo model: base accuracy {_pct(rec['base_accuracy'])}, RL {_pct(rec['rl_accuracy'])} on the sweep's "
            "prompts and sampling (top-p 0.7): the RL model is not more accurate than the base here, so there is no gap "
            "for replacement to recover and no recovery ratio is reported."
        )
        lines += ["", "![Fig. 1c](fig1c_replacement.png)"]
    elif rec:
        lines.append(
            f"Base → dapo model: base accuracy {_pct(rec['base_accuracy'])}, RL {_pct(rec['rl_accuracy'])}; replacement ratio "
            f"needed to reach base + {RECOVERY:.0%} of the gap ({_pct(rec['target_accuracy'])}):"
        )
        lines += [f"- `{c}`: " + ("not reached on the grid" if r is None else f"{100 * r:.1f}% of tokens") for c, r in rec["ratio"].items()]
        lines += ["", "![Fig. 1c](fig1c_replacement.png)"]
    else:
        lines.append("No replacement sweep output.")
    lines += ["", "## Test-time extrapolation (Fig. 4)", ""]
    for label, e in report["extrapolation"].items():
        gs = ", ".join(f"γ={g}: {_pct(v)}" for g, v in sorted(e["gamma"].items(), key=lambda kv: float(kv[0])))
        lines.append(f"- {e['arm']}: RL alone {_pct(e['rl_accuracy'])}, replace {_pct(e['replace_accuracy'])}, {gs}")
    if report["extrapolation"]:
        lines += ["", "![Fig. 4](fig4_extrapolation.png)"]
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
    rows = _sweep_rows(study, "dapo")
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
        "replacement": recovery_ratios(rows),
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
    plot_fig1c(_sweep_rows(study, "dapo"), report["replacement"], out / "fig1c_replacement.png")
    plot_fig4(report["extrapolation"], out / "fig4_extrapolation.png", study.spec.extrapolate_tau)
    report.pop("accuracy")
    data = _finite(report)
    md = render_markdown({**data, "accuracy": {"n": data["n"], "arms": data["arms"], "base": data["base"], "comparisons": data["comparisons"]}})
    write_json_atomic(out / "report.json", data, indent=1)
    write_text_atomic(out / "report.md", md)
    return {"report.md": out / "report.md", "report.json": out / "report.json", **{f: out / f for f in FIGURES}}
