"""The analysis job end to end: validate inputs, plan shards, run the pending ones, merge, report.

Output directory layout::

    manifest.json          what the job is (models, input, temperature, plan digest): a resumed run must match
    shards/                shard-NNNNN.samples.parquet, shard-NNNNN.tokens.parquet (per-shard results)
    tokens.parquet         per-token records: sample_id, source, position, token_id, token, all metrics
    samples.parquet        per-response records: ids, lengths, prompt/response token ids, response text
    summary.json           counts, quantiles, |Δlog p| threshold fractions, per-source means
    histograms.png         Fig. 1(b)-style histograms, one panel per metric (unless ``figure`` is off)
    top_tokens.json        most positive / most negative Δlog p tokens with context
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from reweight.analysis.data import digest_items, generation_items, read_table, response_items
from reweight.analysis.metrics import METRIC_NAMES
from reweight.analysis.report import (
    DEFAULT_THRESHOLDS,
    HIST_METRICS,
    finite_or_none,
    merge_shards,
    save_histograms,
    summarize,
    top_tokens,
)
from reweight.analysis.shards import ShardSettings, run_shards, split_into_shards
from reweight.io import write_json_atomic
from reweight.models import check_model_vocab, load_shared_tokenizer

MANIFEST_VERSION = 1


def _write_json(path: str | Path, obj: object) -> Path:
    """Indented JSON, NaN / inf refused (``finite_or_none`` first), written atomically."""
    return write_json_atomic(path, obj, indent=2, allow_nan=False)


@dataclass
class AnalysisConfig:
    """One analysis job. Exactly one of ``responses`` / ``prompts`` is set."""

    base_model: str
    rl_model: str
    out_dir: str
    responses: str | None = None
    prompts: str | None = None
    generate_with: tuple[str, ...] = ("base", "rl")
    samples_per_prompt: int = 1
    max_new_tokens: int = 512
    seed: int = 0
    prompt_key: str = "prompt"
    response_key: str = "response"
    source_key: str = "source"
    id_key: str | None = None
    source: str | None = None
    chat_template: bool = False
    temperature: float = 1.0
    chunk_size: int | None = None
    batch_tokens: int = 16384
    max_batch_size: int = 64
    device: str = "auto"
    dtype: str = "auto"
    num_workers: int = 1
    shard_size: int = 256
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    hist_metrics: tuple[str, ...] = HIST_METRICS
    top_k: int = 50
    context: int = 24
    figure: bool = True  # write histograms.png (reweight-study turns it off per seed: it pools the seeds' tokens)
    overwrite: bool = False
    progress: bool = True


def _validate(cfg: AnalysisConfig) -> None:
    if (cfg.responses is None) == (cfg.prompts is None):
        raise ValueError("give exactly one of responses (a file of responses) or prompts (to generate responses)")
    if not (cfg.temperature > 0):
        raise ValueError(f"temperature must be > 0 (it defines π = softmax(logits / T)), got {cfg.temperature}")
    bad = [m for m in cfg.hist_metrics if m not in METRIC_NAMES]
    if bad:
        raise ValueError(f"hist_metrics {bad} are not metrics; choose from {list(METRIC_NAMES)}")
    bad_gen = [g for g in cfg.generate_with if g not in ("base", "rl")]
    if cfg.prompts is not None and (bad_gen or not cfg.generate_with):
        raise ValueError(f"generate_with must list 'base' and/or 'rl', got {list(cfg.generate_with)}")
    for name in ("shard_size", "batch_tokens", "max_batch_size", "num_workers", "max_new_tokens"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")


def _manifest(cfg: AnalysisConfig, plan_digest: str, n_items: int, n_shards: int) -> dict:
    m = {
        "version": MANIFEST_VERSION,
        "base_model": cfg.base_model,
        "rl_model": cfg.rl_model,
        "input": str(Path(cfg.responses or cfg.prompts).resolve()),
        "mode": "responses" if cfg.responses else "generate",
        "temperature": cfg.temperature,
        "shard_size": cfg.shard_size,
        "n_items": n_items,
        "n_shards": n_shards,
        "plan_digest": plan_digest,
    }
    if cfg.prompts:
        m.update(max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    return m


def _prepare_out_dir(cfg: AnalysisConfig, manifest: dict) -> Path:
    """Create the output directory, or check that an existing one holds the same job (resume)."""
    out = Path(cfg.out_dir)
    path = out / "manifest.json"
    if path.exists() and cfg.overwrite:
        shutil.rmtree(out / "shards", ignore_errors=True)
    elif path.exists():
        old = json.loads(path.read_text())
        differ = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
        if differ:
            raise ValueError(
                f"{str(out)!r} holds a different analysis job (differs in {differ}); "
                "use another output directory or --overwrite to start afresh"
            )
    _write_json(path, manifest)
    return out


def run_analysis(cfg: AnalysisConfig) -> dict:
    """Run (or resume) the job; returns the summary written to ``summary.json``."""
    _validate(cfg)
    input_path = cfg.responses or cfg.prompts
    table = read_table(input_path)  # errors for a missing or unreadable file come first

    tok_base = load_shared_tokenizer(cfg.base_model, cfg.rl_model)  # a verl checkpoint is exported here, once
    vocab_limit = len(tok_base)
    check_model_vocab(cfg.base_model, vocab_limit, "base")
    check_model_vocab(cfg.rl_model, vocab_limit, "RL")

    common = dict(path=str(input_path), prompt_key=cfg.prompt_key, id_key=cfg.id_key, vocab_limit=vocab_limit)
    if cfg.responses:
        items = response_items(
            table,
            tok_base,
            response_key=cfg.response_key,
            source_key=cfg.source_key,
            default_source=cfg.source,
            chat_template=cfg.chat_template,
            **common,
        )
    else:
        items = generation_items(
            table,
            tok_base,
            generate_with=cfg.generate_with,
            samples_per_prompt=cfg.samples_per_prompt,
            chat_template=cfg.chat_template,
            **common,
        )
    if not items:
        raise ValueError(f"{str(input_path)!r} has no rows to analyse")
    shards = split_into_shards(items, cfg.shard_size)
    out = _prepare_out_dir(cfg, _manifest(cfg, digest_items(items), len(items), len(shards)))

    settings = ShardSettings(
        base_model=cfg.base_model,
        rl_model=cfg.rl_model,
        temperature=cfg.temperature,
        device=cfg.device,
        dtype=cfg.dtype,
        chunk_size=cfg.chunk_size,
        batch_tokens=cfg.batch_tokens,
        max_batch_size=cfg.max_batch_size,
        max_new_tokens=cfg.max_new_tokens,
        seed=cfg.seed,
    )
    ran = run_shards(settings, shards, out / "shards", num_workers=cfg.num_workers, progress=cfg.progress)

    import pyarrow.parquet as pq

    merge_shards(out / "shards", len(shards), out / "tokens.parquet", out / "samples.parquet")
    tokens, samples = pq.read_table(out / "tokens.parquet"), pq.read_table(out / "samples.parquet")
    summary = summarize(tokens, samples, metrics=METRIC_NAMES, thresholds=cfg.thresholds)
    summary["figure"] = save_histograms(tokens, cfg.hist_metrics, out / "histograms.png") if cfg.figure else None
    _write_json(out / "top_tokens.json", finite_or_none(top_tokens(tokens, cfg.top_k, cfg.context)))
    summary["config"] = {k: v for k, v in asdict(cfg).items() if k != "progress"}
    summary["shards"] = {"total": len(shards), "run_now": ran}
    summary = finite_or_none(summary)
    _write_json(out / "summary.json", summary)
    return summary
