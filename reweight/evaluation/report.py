"""Evaluation report: avg@n / pass@k tables (markdown + JSON) and pass@k curves, per model label.

Input: ``{label: [ProblemResult, ...]}`` (e.g. ``base``, ``rl``, ``reweighted``), optionally the
support metrics of a base / RL pair. Output directory: ``report.md``, ``report.json``,
``pass_at_k.png`` (one panel per benchmark plus the macro average; one line per model; k = 1..n).
All files are written atomically.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reweight.evaluation.metrics import macro_mean, pass_at_k_array, summarise
from reweight.evaluation.records import EvalInputError, ProblemResult
from reweight.io import save_figure_atomic, write_text_atomic


def group_counts(results: Sequence[ProblemResult]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(n by benchmark, c by benchmark), each benchmark's arrays of shape (P_g,)."""
    if not results:
        raise EvalInputError("no results to report")
    n: dict[str, list[int]] = {}
    c: dict[str, list[int]] = {}
    for r in results:
        if r.n == 0:
            raise EvalInputError(f"problem {r.uid!r} has no samples")
        n.setdefault(r.data_source, []).append(r.n)
        c.setdefault(r.data_source, []).append(r.num_correct)
    return {g: np.array(v) for g, v in n.items()}, {g: np.array(v) for g, v in c.items()}


def pass_curves(results: Sequence[ProblemResult]) -> dict[str, dict[int, float]]:
    """{benchmark or "average": {k: mean pass@k}} for k = 1..(smallest n); "average" is the macro mean."""
    n_by, c_by = group_counts(results)
    k_max = int(min(v.min() for v in n_by.values()))
    curves: dict[str, dict[int, float]] = {g: {} for g in n_by}
    curves["average"] = {}
    for k in range(1, k_max + 1):
        per = {g: pass_at_k_array(n_by[g], c_by[g], k) for g in n_by}
        for g, vals in per.items():
            curves[g][k] = float(vals.mean())
        curves["average"][k] = macro_mean(per)
    return curves


def default_ks(n_min: int) -> list[int]:
    """Powers of two up to n, plus n itself: 1, 2, 4, ..., n."""
    ks = [1 << i for i in range(int(math.log2(n_min)) + 1)] if n_min >= 1 else []
    return sorted(set(ks + [n_min]))


def build_report(
    results_by_label: Mapping[str, Sequence[ProblemResult]],
    ks: Sequence[int] | None = None,
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    support: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The report as a JSON-able dict: per label, per benchmark, metric -> value and bootstrap interval.

    ``ks`` default: powers of two up to the smallest n over all labels. k > n is refused naming
    the label, before any bootstrap runs.
    """
    if not results_by_label:
        raise EvalInputError("no results given")
    counts = {label: group_counts(res) for label, res in results_by_label.items()}
    n_min = min(int(v.min()) for n_by, _ in counts.values() for v in n_by.values())
    ks = list(ks) if ks else default_ks(n_min)
    for label, (n_by, _) in counts.items():
        label_min = min(int(v.min()) for v in n_by.values())
        if max(ks) > label_min:
            raise EvalInputError(f"model {label!r}: pass@{max(ks)} asked but it has only n={label_min} samples for some problem (k > n)")
    uid_sets = {label: {r.uid for r in res} for label, res in results_by_label.items()}
    same_problems = len({frozenset(s) for s in uid_sets.values()}) == 1
    report: dict[str, Any] = {
        "ks": ks,
        "confidence": confidence,
        "bootstrap_resamples": num_resamples,
        "seed": seed,
        "same_problems": same_problems,
        "models": {},
    }
    for label, (n_by, c_by) in counts.items():
        report["models"][label] = {
            "summary": summarise(n_by, c_by, ks, num_resamples, confidence, seed),
            "pass_at_k_curve": {g: {str(k): v for k, v in curve.items()} for g, curve in pass_curves(results_by_label[label]).items()},
            "num_problems": int(sum(v.size for v in n_by.values())),
        }
    if support is not None:
        report["support"] = dict(support)
    return report


def _fmt(entry: Mapping[str, float]) -> str:
    v, lo, hi = entry["value"], entry["ci_low"], entry["ci_high"]
    if math.isnan(lo):
        return f"{100 * v:.1f}"
    return f"{100 * v:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def _num(x: Any) -> str:
    if x is None:  # NaN read back from JSON (a zero denominator)
        return "n/a"
    if isinstance(x, float):
        return "n/a" if math.isnan(x) else f"{x:.3f}"
    return str(x)


def render_markdown(report: Mapping[str, Any]) -> str:
    """Markdown tables: one per metric (rows: models, columns: benchmarks + average), then support."""
    models = report["models"]
    groups = list(dict.fromkeys(g for m in models.values() for g in m["summary"] if g != "average")) + ["average"]
    metrics = list(dict.fromkeys(metric for m in models.values() for metric in m["summary"]["average"]))
    lines = [
        "# Evaluation report",
        "",
        f"Values in %, with {100 * report['confidence']:.0f}% bootstrap intervals over problems "
        f"({report['bootstrap_resamples']} resamples, seed {report['seed']}); "
        "'average' is the macro mean over benchmarks.",
    ]
    if not report["same_problems"]:
        lines += ["", "**Warning:** the models were not evaluated on the same set of problems."]
    for metric in metrics:
        lines += ["", f"## {metric}", "", "| model | " + " | ".join(groups) + " |", "|---" * (len(groups) + 1) + "|"]
        for label, m in models.items():
            cells = [_fmt(m["summary"][g][metric]) if metric in m["summary"].get(g, {}) else "–" for g in groups]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    counts = ", ".join(f"{label}: {m['num_problems']}" for label, m in models.items())
    lines += ["", f"Problems per model: {counts}.", "", "![pass@k](pass_at_k.png)"]
    support = report.get("support")
    if support:
        lines += ["", "## Support (Invisible Leash)", "", support_caption(support), "", *support_table(support["aggregate"])]
    return "\n".join(lines) + "\n"


SUPPORT_COLUMNS = (
    ("num_problems", "problems"), ("preservation", "P"), ("shrinkage", "S"), ("expansion", "E"), ("neither", "O"),
    ("SRR", "SRR"), ("NDR", "NDR"), ("SDS", "SDS"), ("NSCR", "NSCR"), ("pass_at_k_base", "pass@k base"),
    ("pass_at_k_rl", "pass@k RL"), ("answer_entropy_base", "answer H base"), ("answer_entropy_rl", "answer H RL"),
    ("token_entropy_base", "token H base"), ("token_entropy_rl", "token H RL"),
)


def support_caption(support: Mapping[str, Any]) -> str:
    """One paragraph saying what the support table counts (the estimator and its budget k)."""
    pair = f"Base `{support.get('base', 'base')}` vs RL `{support.get('rl', 'rl')}`"
    if "estimator" not in support:  # a file of the earlier sequence-probability threshold
        eps = support.get("epsilon")
        return (f"{pair}; ε = {eps if eps is None else f'{eps:.4g}'} (k = {support.get('k')}). Counts of distinct correct "
                "completions above ε, pooled over problems; n/a = zero denominator. Entropies in nats.")
    eps = support.get("epsilon")
    bound = ""
    if eps:
        bound = f" (an answer never drawn in k samples has probability ≤ {eps:.3g} at confidence {1 - support.get('zeta', 0.05):.2f})"
    return (
        f"{pair}, budget k = {support['k']}: a problem's correct answer is in a model's empirical support when one of "
        f"its first k samples is correct{bound}. P: both models, S: base only, E: RL only, O: neither; counts of "
        "problems pooled per benchmark, ratios from the pooled counts, n/a = zero denominator. Answer entropy over "
        "classes of mathematically equivalent final answers, token entropy along each model's own samples; nats, "
        "means over problems."
    )


def support_table(aggregate: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Markdown rows of the support table: one per benchmark plus ``average`` (all problems pooled)."""
    cols = [(key, title) for key, title in SUPPORT_COLUMNS if any(key in e for e in aggregate.values())]
    lines = ["| benchmark | " + " | ".join(title for _, title in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for g, entry in aggregate.items():
        lines.append(f"| {g} | " + " | ".join(_num(entry[key]) if key in entry else "–" for key, _ in cols) + " |")
    return lines


def plot_pass_curves(report: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """pass@k against k (log2 axis), one panel per benchmark + average, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    models = report["models"]
    groups = list(dict.fromkeys(g for m in models.values() for g in m["pass_at_k_curve"] if g != "average")) + ["average"]
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.6), squeeze=False)
    for ax, g in zip(axes[0], groups):
        for label, m in models.items():
            curve = m["pass_at_k_curve"].get(g)
            if not curve:
                continue
            ks = [int(k) for k in curve]
            ax.plot(ks, [100 * curve[str(k)] for k in ks], marker="o", markersize=3, label=label)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
        ax.set_title(g)
        ax.set_xlabel("k")
        ax.set_ylabel("pass@k (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    try:
        return save_figure_atomic(fig, path, dpi=120)
    finally:
        plt.close(fig)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


def dumps_json(obj: Any) -> str:
    """JSON text with NaN/inf written as null (strict JSON)."""
    return json.dumps(_json_safe(obj), indent=2, allow_nan=False) + "\n"


def write_report(report: Mapping[str, Any], out_dir: str | os.PathLike, plot: bool = True) -> dict[str, Path]:
    """Write report.md, report.json and (``plot``) pass_at_k.png into ``out_dir``; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md", "json": out / "report.json"}
    write_text_atomic(paths["json"], dumps_json(report))
    write_text_atomic(paths["markdown"], render_markdown(report))
    if plot:
        paths["plot"] = plot_pass_curves(report, out / "pass_at_k.png")
    return paths
