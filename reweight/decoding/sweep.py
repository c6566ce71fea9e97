"""τ / γ sweeps of the two-model decoder: accuracy vs replacement ratio (Fig. 1c) and Fig. 4 bars.

A sweep is a list of :class:`GridPoint` settings decoded over the same prompts with ``n`` samples
per prompt. Sample ``j`` of prompt ``i`` uses the same seed at every grid point, so settings are
compared on common random numbers. Each finished point is written atomically to
``<out>/points/<key>.json`` (summary) after ``<key>.samples.jsonl`` (one record per sequence);
a rerun skips points whose summary exists and was produced with the same settings, and refuses
an output directory written with different ones. The end products are ``results.csv``,
``results.json``, ``fig1c_accuracy_vs_ratio.png`` and ``fig4_extrapolation.png``.

:func:`generate` decodes a single setting to a JSON-lines file (``reweight-decode generate``); it and
:func:`run_sweep` share one chunked decoding loop, :func:`decode_samples`.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from reweight.decoding.data import EvalPrompt
from reweight.decoding.decoder import DecodeConfig, SequenceResult, TwoModelDecoder
from reweight.io import save_figure_atomic, write_text_atomic

#: Default τ grids (flag when Δlog p ≤ τ; entropy / KL ≥ τ; u < τ), coarse enough for a first look.
DEFAULT_GRIDS: dict[str, tuple[float, ...]] = {
    "logp_diff": (-2.0, -1.0, -0.5, -0.3, -0.2, -0.1, 0.0),
    "entropy": (3.0, 2.0, 1.5, 1.0, 0.7, 0.5, 0.3, 0.1),
    "kl": (2.0, 1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02),
    "random": (0.02, 0.05, 0.1, 0.2, 0.3, 0.5),
}

Scorer = Callable[[str, str, "str | None"], bool]


@dataclass(frozen=True)
class GridPoint:
    """One decoding setting of a sweep (validated: building its :class:`DecodeConfig` must succeed)."""

    criterion: str
    tau: float = 0.0
    mode: str = "replace"
    gamma: float = 0.0

    @property
    def key(self) -> str:
        """A file-name-safe identifier, unique per setting."""
        tau = "" if self.criterion in ("none", "all") else f"_tau{self.tau:+.6g}"
        gamma = "" if self.mode == "replace" else f"_gamma{self.gamma:+.6g}"
        return f"{self.mode}_{self.criterion}{tau}{gamma}"

    def config(self, spec: "SweepSpec") -> DecodeConfig:
        return DecodeConfig(
            criterion=self.criterion, tau=self.tau, mode=self.mode, gamma=self.gamma,
            temperature=spec.temperature, top_p=spec.top_p, max_new_tokens=spec.max_new_tokens,
        )


BASE_POINT = GridPoint("none")
RL_POINT = GridPoint("all")


@dataclass
class SweepSpec:
    """What to sweep and how to sample.

    ``grids``: criterion → τ values (mode ``replace``). ``extrapolate_tau`` + ``gammas``: the
    Fig. 4 comparison (``logp_diff`` at that τ, replace vs extrapolate per γ). ``global_gammas``:
    non-selective extrapolation (RL proposes, every token from π_Extra). Base (criterion ``none``)
    and RL (criterion ``all``) are always included.
    """

    grids: dict[str, Sequence[float]] = field(default_factory=lambda: dict(DEFAULT_GRIDS))
    extrapolate_tau: float | None = None
    gammas: Sequence[float] = ()
    global_gammas: Sequence[float] = ()
    n_samples: int = 4
    max_new_tokens: int = 1024
    temperature: float = 1.0
    top_p: float = 0.7
    seed: int = 0
    batch_size: int = 16

    def points(self) -> list[GridPoint]:
        """All grid points, deduplicated, base and RL first. Raises ``ValueError`` on bad settings."""
        if self.n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {self.n_samples}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.gammas and self.extrapolate_tau is None:
            raise ValueError("gammas given without extrapolate_tau (the logp_diff τ of the Fig. 4 comparison)")
        pts = [BASE_POINT, RL_POINT]
        for criterion, taus in self.grids.items():
            pts += [GridPoint(criterion, float(t)) for t in taus]
        if self.extrapolate_tau is not None:
            pts.append(GridPoint("logp_diff", float(self.extrapolate_tau)))
            pts += [GridPoint("logp_diff", float(self.extrapolate_tau), "extrapolate", float(g)) for g in self.gammas]
        pts += [GridPoint("all", 0.0, "global", float(g)) for g in self.global_gammas]
        by_key: dict[str, GridPoint] = {}
        for p in pts:
            by_key.setdefault(p.key, p)
        unique = list(by_key.values())
        for p in unique:
            p.config(self)  # validates criterion, mode, τ, γ, temperature, top-p, length
        return unique

    def sampling(self) -> dict[str, Any]:
        """The settings every point shares (a point is reused only if these match)."""
        return dict(n_samples=self.n_samples, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                    top_p=self.top_p, seed=self.seed)


def sequence_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """The seed of sample ``sample_index`` of prompt ``prompt_index`` (independent of batching)."""
    digest = hashlib.sha256(f"{seed}/{prompt_index}/{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def sample_order(n_prompts: int, n_samples: int) -> list[tuple[int, int]]:
    """(prompt index, sample index) of every sequence, prompt-major: the order sequences are decoded and stored."""
    return [(i, j) for i in range(n_prompts) for j in range(n_samples)]


def decode_samples(
    decoder: TwoModelDecoder,
    prompt_ids: Sequence[Sequence[int]],
    order: Sequence[tuple[int, int]],
    config: DecodeConfig,
    seed: int,
    batch_size: int,
    on_chunk: Callable[[int], Any] | None = None,
) -> list[SequenceResult]:
    """Decode the sequences of ``order`` (see :func:`sample_order`) in chunks of ``batch_size``, one per entry.

    Sequence ``(i, j)`` decodes prompt ``prompt_ids[i]`` with seed :func:`sequence_seed` ``(seed, i, j)``, so
    its tokens do not depend on the chunking; ``on_chunk(n)`` is called after each chunk of ``n`` sequences
    (a progress bar's ``update``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    results: list[SequenceResult] = []
    for lo in range(0, len(order), batch_size):
        chunk = order[lo: lo + batch_size]
        results += decoder.decode([prompt_ids[i] for i, _ in chunk], config, [sequence_seed(seed, i, j) for i, j in chunk])
        if on_chunk is not None:
            on_chunk(len(chunk))
    return results


def generate(
    decoder: TwoModelDecoder,
    prompts: Sequence[EvalPrompt],
    prompt_ids: Sequence[Sequence[int]],
    config: DecodeConfig,
    out: str | Path,
    *,
    n_samples: int = 1,
    seed: int = 0,
    batch_size: int = 16,
    score: Scorer | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Decode one setting, ``n_samples`` sequences per prompt, and write one JSON record per sequence to ``out``.

    A record holds ``prompt_index``, ``sample_index``, ``ground_truth``, ``correct`` (None for a prompt
    without a ground truth) and the :class:`SequenceResult` fields; ``out`` is written atomically. Returns
    the summary: the config, the number of sequences, the token-weighted ``replacement_ratio`` and, when
    any sequence was scored, ``accuracy`` over the scored ones. ``score`` as in :func:`run_sweep`.
    """
    from tqdm.auto import tqdm

    if score is None:
        from reweight.evaluation.scoring import is_correct as score
    if len(prompts) != len(prompt_ids):
        raise ValueError(f"{len(prompts)} prompts but {len(prompt_ids)} encodings")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    order = sample_order(len(prompts), n_samples)
    with tqdm(total=len(order), desc="generate", unit="seq", disable=not progress) as bar:
        results = decode_samples(decoder, prompt_ids, order, config, seed, batch_size, on_chunk=bar.update)
    records = []
    for (i, j), r in zip(order, results):
        gt = prompts[i].ground_truth
        correct = bool(score(r.text, gt, prompts[i].data_source)) if gt else None
        records.append(dict(prompt_index=i, sample_index=j, ground_truth=gt, correct=correct, **r.to_dict()))
    write_text_atomic(Path(out), "".join(json.dumps(r) + "\n" for r in records))
    generated = sum(r.n_generated for r in results)
    replaced = sum(r.n_replaced for r in results)
    summary: dict[str, Any] = dict(config=config.to_dict(), sequences=len(records),
                                   replacement_ratio=replaced / generated if generated else 0.0)
    scored = [r["correct"] for r in records if r["correct"] is not None]
    if scored:
        summary["accuracy"] = sum(scored) / len(scored)
    return summary


def dataset_fingerprint(prompts: Sequence[Sequence[int]], ground_truths: Sequence[str]) -> str:
    """A short hash of the encoded prompts and references (detects a changed dataset on resume)."""
    h = hashlib.sha256()
    for p, g in zip(prompts, ground_truths):
        h.update(json.dumps([list(p), g]).encode())
    return h.hexdigest()[:16]


def summarize_point(
    point: GridPoint, results: Sequence[SequenceResult], correct: Sequence[bool], prompt_index: Sequence[int]
) -> dict[str, Any]:
    """Accuracy (avg@n over all sequences), replacement ratios and lengths of one grid point.

    ``replacement_ratio`` is token-weighted (replaced / generated over all sequences, the paper's
    "fraction of generated tokens replaced"); ``mean_sequence_ratio`` averages per-sequence ratios.
    ``accuracy_stderr`` is the standard error over prompts of the per-prompt accuracy.
    """
    n_seq = len(results)
    generated = sum(r.n_generated for r in results)
    replaced = sum(r.n_replaced for r in results)
    per_prompt: dict[int, list[bool]] = {}
    for i, c in zip(prompt_index, correct):
        per_prompt.setdefault(i, []).append(bool(c))
    means = [sum(v) / len(v) for v in per_prompt.values()]
    acc = sum(correct) / n_seq if n_seq else 0.0
    if len(means) > 1:
        mu = sum(means) / len(means)
        stderr = math.sqrt(sum((m - mu) ** 2 for m in means) / (len(means) - 1) / len(means))
    else:
        stderr = 0.0
    return dict(
        key=point.key, criterion=point.criterion, tau=point.tau, mode=point.mode, gamma=point.gamma,
        accuracy=acc, accuracy_stderr=stderr,
        replacement_ratio=replaced / generated if generated else 0.0,
        mean_sequence_ratio=sum(r.replacement_ratio for r in results) / n_seq if n_seq else 0.0,
        n_prompts=len(per_prompt), n_sequences=n_seq, generated_tokens=generated, replaced_tokens=replaced,
        mean_length=generated / n_seq if n_seq else 0.0,
        truncated_fraction=sum(r.finish_reason == "length" for r in results) / n_seq if n_seq else 0.0,
    )


def run_sweep(
    decoder: TwoModelDecoder,
    prompts: Sequence[EvalPrompt],
    prompt_ids: Sequence[Sequence[int]],
    spec: SweepSpec,
    out_dir: str | Path,
    *,
    score: Scorer | None = None,
    run_info: dict[str, Any] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Decode every grid point (skipping finished ones), score, and write the table and plots.

    Args:
        decoder: the two-model decoder.
        prompts: the evaluation prompts (ground truth, data source).
        prompt_ids: ``prompts`` encoded (same order).
        spec: the sweep.
        out_dir: output directory (created; reused on restart).
        score: ``(response, ground_truth, data_source) -> bool``; default
            :func:`reweight.evaluation.scoring.is_correct`.
        run_info: extra identifying settings (e.g. model paths) stored with each point and
            required to match on resume.

    Returns:
        the per-point summaries (rows of ``results.csv``), in grid order.
    """
    from tqdm.auto import tqdm

    if score is None:
        from reweight.evaluation.scoring import is_correct as score
    if len(prompts) != len(prompt_ids):
        raise ValueError(f"{len(prompts)} prompts but {len(prompt_ids)} encodings")
    points = spec.points()
    out_dir = Path(out_dir)
    points_dir = out_dir / "points"
    identity = dict(
        sampling=spec.sampling(),
        dataset=dataset_fingerprint(prompt_ids, [p.ground_truth for p in prompts]),
        stop_token_ids=decoder.stop_token_ids,
        **(run_info or {}),
    )
    identity = json.loads(json.dumps(identity))

    done: dict[str, dict[str, Any]] = {}
    for point in points:
        path = points_dir / f"{point.key}.json"
        if path.exists():
            stored = json.loads(path.read_text())
            if stored.get("identity") != identity:
                raise ValueError(
                    f"{path} was produced with different settings ({stored.get('identity')} vs {identity}); "
                    f"use a fresh output directory"
                )
            done[point.key] = stored["summary"]
    todo = [p for p in points if p.key not in done]

    order = sample_order(len(prompts), spec.n_samples)
    bar = tqdm(total=len(todo) * len(order), desc="sweep", unit="seq", disable=not progress)
    for point in todo:
        config = point.config(spec)
        bar.set_postfix_str(point.key)
        start = time.perf_counter()
        results = decode_samples(decoder, prompt_ids, order, config, spec.seed, spec.batch_size, on_chunk=bar.update)
        elapsed = time.perf_counter() - start
        correct = [bool(score(r.text, prompts[i].ground_truth, prompts[i].data_source)) for r, (i, _) in zip(results, order)]
        summary = summarize_point(point, results, correct, [i for i, _ in order])
        summary.update(elapsed_s=elapsed, tokens_per_s=summary["generated_tokens"] / elapsed if elapsed > 0 else 0.0)
        records = [
            json.dumps(dict(prompt_index=i, sample_index=j, correct=c, **r.to_dict()))
            for r, c, (i, j) in zip(results, correct, order)
        ]
        write_text_atomic(points_dir / f"{point.key}.samples.jsonl", "\n".join(records) + "\n")
        write_text_atomic(
            points_dir / f"{point.key}.json",
            json.dumps(dict(identity=identity, config=config.to_dict(), summary=summary), indent=1),
        )
        done[point.key] = summary
    bar.close()

    rows = [done[p.key] for p in points]
    write_table(rows, out_dir)
    plot_fig1c(rows, out_dir / "fig1c_accuracy_vs_ratio.png")
    plot_fig4(rows, spec, out_dir / "fig4_extrapolation.png")
    return rows


TABLE_COLUMNS = (
    "key", "criterion", "tau", "mode", "gamma", "accuracy", "accuracy_stderr", "replacement_ratio",
    "mean_sequence_ratio", "n_prompts", "n_sequences", "generated_tokens", "replaced_tokens", "mean_length",
    "truncated_fraction", "elapsed_s", "tokens_per_s",
)


def write_table(rows: Sequence[dict[str, Any]], out_dir: str | Path) -> None:
    """``results.csv`` and ``results.json`` (one row per grid point), written atomically."""
    import csv
    import io

    out_dir = Path(out_dir)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=TABLE_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out_dir / "results.csv", buf.getvalue())
    write_text_atomic(out_dir / "results.json", json.dumps(list(rows), indent=1))


def _find(rows: Sequence[dict[str, Any]], point: GridPoint) -> dict[str, Any] | None:
    return next((r for r in rows if r["key"] == point.key), None)


def plot_fig1c(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Accuracy vs replacement ratio, one line per criterion; base and RL accuracy as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    criteria = sorted({r["criterion"] for r in rows if r["mode"] == "replace" and r["criterion"] not in ("none", "all")})
    for criterion in criteria:
        pts = sorted(
            (r["replacement_ratio"] * 100, r["accuracy"] * 100, r["tau"])
            for r in rows if r["mode"] == "replace" and r["criterion"] == criterion
        )
        (line,) = ax.plot([x for x, _, _ in pts], [y for _, y, _ in pts], marker="o", label=criterion)
        for x, y, tau in pts:
            ax.annotate(f"{tau:g}", (x, y), textcoords="offset points", xytext=(3, 4), fontsize=6, color=line.get_color())
    for point, label, style in ((BASE_POINT, "base", "--"), (RL_POINT, "RL", ":")):
        row = _find(rows, point)
        if row is not None:
            ax.axhline(row["accuracy"] * 100, linestyle=style, color="gray" if label == "base" else "black",
                       label=f"{label} ({row['accuracy'] * 100:.1f}%)")
    top = max([r["accuracy"] * 100 for r in rows] + [1.0])
    ax.set_ylim(0, min(100.0, top * 1.15 + 1))
    ax.set_xlim(left=0)
    ax.set_xlabel("replacement ratio (% of generated tokens)")
    ax.set_ylabel("accuracy (avg@n, %)")
    ax.set_title("Selective replacement: accuracy vs replacement ratio (labels: τ)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=130)
    plt.close(fig)


def plot_fig4(rows: Sequence[dict[str, Any]], spec: SweepSpec, path: str | Path) -> None:
    """Bars: base, selective replacement at ``extrapolate_tau``, RL, selective extrapolation per γ, global per γ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars: list[tuple[str, dict[str, Any] | None]] = [("base", _find(rows, BASE_POINT))]
    if spec.extrapolate_tau is not None:
        tau = float(spec.extrapolate_tau)
        bars.append((f"replace\nτ={tau:g}", _find(rows, GridPoint("logp_diff", tau))))
    bars.append(("RL", _find(rows, RL_POINT)))
    if spec.extrapolate_tau is not None:
        bars += [(f"extrapolate\nτ={spec.extrapolate_tau:g} γ={g:g}",
                  _find(rows, GridPoint("logp_diff", float(spec.extrapolate_tau), "extrapolate", float(g))))
                 for g in spec.gammas]
    bars += [(f"global\nγ={g:g}", _find(rows, GridPoint("all", 0.0, "global", float(g)))) for g in spec.global_gammas]
    bars = [(label, r) for label, r in bars if r is not None]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(bars)), 4.2))
    heights = [r["accuracy"] * 100 for _, r in bars]
    errors = [r["accuracy_stderr"] * 100 for _, r in bars]
    ax.bar(range(len(bars)), heights, yerr=errors, capsize=3,
           color=["#999999" if lbl == "base" else "#4c72b0" if lbl == "RL" else "#dd8452" for lbl, _ in bars])
    for x, h in enumerate(heights):
        ax.text(x, h, f"{h:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(bars)), [lbl for lbl, _ in bars], fontsize=8)
    ax.set_ylim(0, min(100.0, max(heights + [1.0]) * 1.15 + 1))
    ax.set_ylabel("accuracy (avg@n, %)")
    ax.set_title("Test-time extrapolation")
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=130)
    plt.close(fig)


__all__ = [
    "BASE_POINT", "DEFAULT_GRIDS", "RL_POINT", "GridPoint", "SweepSpec", "dataset_fingerprint", "decode_samples",
    "generate", "plot_fig1c", "plot_fig4", "run_sweep", "sample_order", "sequence_seed", "summarize_point",
    "write_table",
]
