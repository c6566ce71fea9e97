"""Merging shards and reporting: summary statistics, Fig. 1(b)-style histograms, the extreme Δlog p tokens.

Fig. 1(b) of arXiv 2603.22117 overlays, per metric, the token-level distribution on responses sampled
from the base model and on responses sampled from the RLVR model, with a log-scale density axis: Δlog p
separates the two where entropy and KL barely do.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from reweight.analysis.shards import SAMPLE_SCHEMA, TOKEN_SCHEMA, shard_paths
from reweight.io import atomic_write, save_figure_atomic

HIST_METRICS = ("delta_logp", "entropy_base", "entropy_rl", "kl_rl_base", "kl_base_rl")
METRIC_LABELS = {
    "delta_logp": "Δlog p = log π_RL − log π_Base",
    "entropy_base": "entropy of π_Base",
    "entropy_rl": "entropy of π_RL",
    "kl_rl_base": "KL(π_RL ‖ π_Base)",
    "kl_base_rl": "KL(π_Base ‖ π_RL)",
    "logp_base": "log π_Base(token)",
    "logp_rl": "log π_RL(token)",
}
QUANTILES = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)
DEFAULT_THRESHOLDS = (0.1, 0.5, 1.0, 2.0)
SOURCE_COLORS = {"base": "tab:blue", "rl": "tab:red"}


def merge_shards(shard_dir: str | Path, n_shards: int, tokens_path: str | Path, samples_path: str | Path) -> None:
    """Concatenate the shards' files in shard order into one tokens and one samples parquet (streamed, atomic)."""

    def concat(which: int, schema: pa.Schema, path: str | Path) -> None:
        def write(tmp: Path) -> None:
            with pq.ParquetWriter(tmp, schema) as writer:
                for i in range(n_shards):
                    writer.write_table(pq.read_table(shard_paths(shard_dir, i)[which], schema=schema))

        atomic_write(path, write)

    concat(0, SAMPLE_SCHEMA, samples_path)
    concat(1, TOKEN_SCHEMA, tokens_path)


def _stats(values: np.ndarray, quantiles: Sequence[float]) -> dict:
    if values.size == 0:
        return {"count": 0, "mean": None, "std": None, "quantiles": {str(q): None for q in quantiles}}
    v = values.astype(np.float64)
    qs = np.quantile(v, quantiles)
    return {
        "count": int(v.size),
        "mean": float(v.mean()),
        "std": float(v.std()),
        "quantiles": {str(q): float(x) for q, x in zip(quantiles, qs)},
    }


def _frac_above(abs_delta: np.ndarray, thresholds: Sequence[float]) -> dict:
    n = abs_delta.size
    return {str(t): (float((abs_delta > t).sum() / n) if n else None) for t in thresholds}


def summarize(
    tokens: pa.Table,
    samples: pa.Table,
    *,
    metrics: Sequence[str],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    quantiles: Sequence[float] = QUANTILES,
) -> dict:
    """Counts, per-metric statistics overall and per source, and the fraction of tokens with |Δlog p| > each threshold."""
    source = np.asarray(tokens.column("source").to_pylist(), dtype=object)
    sample_source = samples.column("source").to_pylist()
    sample_len = np.asarray(samples.column("n_response_tokens").to_pylist(), dtype=np.int64)
    sources = sorted(set(sample_source))
    masks = {s: source == s for s in sources}
    columns = {m: tokens.column(m).to_numpy() for m in metrics}
    abs_delta = np.abs(tokens.column("delta_logp").to_numpy())
    out: dict = {
        "n_samples": samples.num_rows,
        "n_empty_responses": int((sample_len == 0).sum()),
        "n_tokens": tokens.num_rows,
        "sources": {},
        "metrics": {},
        "abs_delta_logp_above": {"all": _frac_above(abs_delta, thresholds), "by_source": {}},
        "per_source_means": {},
    }
    for s in sources:
        in_s = np.asarray([x == s for x in sample_source], dtype=bool)
        out["sources"][s] = {
            "n_samples": int(in_s.sum()),
            "n_empty_responses": int((sample_len[in_s] == 0).sum()),
            "n_tokens": int(masks[s].sum()),
        }
        out["abs_delta_logp_above"]["by_source"][s] = _frac_above(abs_delta[masks[s]], thresholds)
        out["per_source_means"][s] = {
            m: (float(columns[m][masks[s]].astype(np.float64).mean()) if masks[s].any() else None) for m in metrics
        }
    for m in metrics:
        out["metrics"][m] = {
            "all": _stats(columns[m], quantiles),
            "by_source": {s: _stats(columns[m][masks[s]], quantiles) for s in sources},
        }
    return out


def histogram_figure(values: dict[str, dict[str, np.ndarray]], metrics: Sequence[str], bins: int = 80):
    """One panel per metric; per source (``values[source][metric]``) a step density on a log y-axis, shared bins.

    Returns a matplotlib ``Figure`` with ``len(metrics)`` axes, in ``metrics`` order.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    fallback_colors = iter(["tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:gray"])
    colors = {s: SOURCE_COLORS.get(s) or next(fallback_colors, "black") for s in values}
    for ax, m in zip(axes[0], metrics):
        pooled = np.concatenate([values[s][m] for s in values]) if values else np.zeros(0)
        pooled = pooled[np.isfinite(pooled)]
        if pooled.size:
            lo, hi = float(pooled.min()), float(pooled.max())
            if hi - lo < 1e-12:
                lo, hi = lo - 0.5, hi + 0.5
            edges = np.linspace(lo, hi, bins + 1)
            for s, by_metric in values.items():
                v = by_metric[m]
                if v.size:
                    density, _ = np.histogram(v, bins=edges, density=True)
                    ax.stairs(density, edges, label=f"{s} responses (n={v.size})", color=colors[s], linewidth=1.4)
            ax.set_yscale("log")
        ax.set_title(METRIC_LABELS.get(m, m), fontsize=10)
        ax.set_xlabel(m)
        ax.set_ylabel("density (log scale)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper right")
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.15, top=0.89, wspace=0.32)  # tight_layout costs seconds
    return fig


def save_histograms(tokens: pa.Table, metrics: Sequence[str], path: str | Path) -> dict:
    """Fig. 1(b) histograms to a PNG (atomic). The PNG's ``panels`` text chunk lists the metrics, one per panel."""
    import matplotlib.pyplot as plt

    source = np.asarray(tokens.column("source").to_pylist(), dtype=object)
    columns = {m: tokens.column(m).to_numpy() for m in metrics}
    values = {s: {m: columns[m][source == s] for m in metrics} for s in sorted(set(source.tolist()))}
    fig = histogram_figure(values, metrics)
    n_axes = len(fig.axes)
    try:
        save_figure_atomic(fig, path, format="png", dpi=110, metadata={"panels": json.dumps(list(metrics))})
    finally:
        plt.close(fig)
    return {"path": str(path), "panels": list(metrics), "n_axes": n_axes, "sources": list(values)}


def top_tokens(tokens: pa.Table, k: int = 50, context: int = 24, after: int = 8) -> dict:
    """The ``k`` most positive and most negative Δlog p tokens, each with the response text around it.

    Relies on the merged table holding each response's tokens contiguously in position order.
    """
    delta = tokens.column("delta_logp").to_numpy()
    if delta.size == 0:
        return {"most_positive": [], "most_negative": []}
    sid = tokens.column("sample_id").to_pylist()
    src = tokens.column("source").to_pylist()
    text = tokens.column("token").to_pylist()
    cols = {c: tokens.column(c).to_pylist() for c in ("position", "token_id", "logp_base", "logp_rl")}
    order = np.argsort(delta, kind="stable")
    k = min(k, delta.size)

    def same(i: int, j: int) -> bool:
        return 0 <= j < len(sid) and sid[j] == sid[i] and src[j] == src[i]

    def record(i: int) -> dict:
        before = [j for j in range(i - context, i) if same(i, j)]
        following = [j for j in range(i + 1, i + 1 + after) if same(i, j)]
        return {
            "sample_id": sid[i],
            "source": src[i],
            "position": cols["position"][i],
            "token": text[i],
            "token_id": cols["token_id"][i],
            "delta_logp": float(delta[i]),
            "logp_base": cols["logp_base"][i],
            "logp_rl": cols["logp_rl"][i],
            "context_before": "".join(text[j] for j in before),
            "context_after": "".join(text[j] for j in following),
        }

    return {
        "most_positive": [record(int(i)) for i in order[::-1][:k]],
        "most_negative": [record(int(i)) for i in order[:k]],
    }


def finite_or_none(obj):
    """JSON-safe copy: NaN/inf floats become None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite_or_none(v) for v in obj]
    return obj
