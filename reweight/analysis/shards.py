"""Shards: independent units of work, each generating (if asked) and scoring a slice of the work items.

A shard writes ``shard-NNNNN.samples.parquet`` then ``shard-NNNNN.tokens.parquet``, each atomically; a
shard is complete when its tokens file exists, and a resumed run skips it. Shards run one after the
other in this process, or on a pool of Ray actors (one per GPU, each loading the model pair once)
when more than one worker is asked for; the shard directory must then be shared by the workers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import pyarrow as pa
import torch

from reweight.analysis.data import WorkItem
from reweight.analysis.metrics import METRIC_NAMES, check_head_path, token_metrics
from reweight.io import write_parquet_atomic
from reweight.models import load_model, load_tokenizer, pick_device, pick_dtype

TOKEN_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("source", pa.string()),
        ("position", pa.int32()),  # index of the token within its response
        ("token_id", pa.int32()),
        ("token", pa.string()),
        *[(name, pa.float32()) for name in METRIC_NAMES],
    ]
)
SAMPLE_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("source", pa.string()),
        ("shard", pa.int32()),
        ("n_prompt_tokens", pa.int32()),
        ("n_response_tokens", pa.int32()),
        ("prompt_ids", pa.list_(pa.int32())),
        ("response_ids", pa.list_(pa.int32())),
        ("response_text", pa.string()),
    ]
)


@dataclass(frozen=True)
class ShardSettings:
    """What a worker needs to load the pair and score (and generate) responses."""

    base_model: str
    rl_model: str
    temperature: float = 1.0
    device: str = "auto"
    dtype: str = "auto"
    chunk_size: int | None = None
    batch_tokens: int = 16384
    max_batch_size: int = 64
    max_new_tokens: int = 512
    seed: int = 0


def shard_paths(shard_dir: str | Path, index: int) -> tuple[Path, Path]:
    """(samples file, tokens file) of shard ``index``."""
    stem = f"shard-{index:05d}"
    return Path(shard_dir) / f"{stem}.samples.parquet", Path(shard_dir) / f"{stem}.tokens.parquet"


def shard_complete(shard_dir: str | Path, index: int) -> bool:
    """A shard is done when both files exist (the tokens file is written last, atomically)."""
    samples, tokens = shard_paths(shard_dir, index)
    return samples.exists() and tokens.exists()


def split_into_shards(items: Sequence[WorkItem], shard_size: int) -> list[list[WorkItem]]:
    """Consecutive slices of ``shard_size`` items (the last may be shorter); deterministic, so resumable."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    return [list(items[i : i + shard_size]) for i in range(0, len(items), shard_size)]


def plan_batches(lengths: Sequence[int], batch_tokens: int, max_batch_size: int) -> list[list[int]]:
    """Indices grouped by similar length so that ``len(batch) * longest <= batch_tokens`` (or a batch of one)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and ((len(current) + 1) * lengths[i] > batch_tokens or len(current) >= max_batch_size):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


class ShardWorker:
    """Holds the model pair; runs shards. Also the body of each Ray actor."""

    def __init__(self, settings: ShardSettings):
        self.settings = settings
        self.device = pick_device(settings.device)
        dtype = pick_dtype(settings.dtype, self.device)
        self.tokenizer = load_tokenizer(settings.base_model)
        self.vocab_limit = len(self.tokenizer)
        self.base = load_model(settings.base_model, self.device, dtype)
        self.rl = load_model(settings.rl_model, self.device, dtype)
        probe = torch.arange(min(8, self.vocab_limit)).unsqueeze(0)
        check_head_path(self.base, probe, name=f"base model {settings.base_model!r}")
        check_head_path(self.rl, probe, name=f"RL model {settings.rl_model!r}")
        self._token_text: dict[int, str] = {}

    def token_text(self, token_id: int) -> str:
        text = self._token_text.get(token_id)
        if text is None:
            text = self._token_text[token_id] = self.tokenizer.decode([token_id])
        return text

    @torch.no_grad()
    def generate(self, model, prompts: Sequence[tuple[int, ...]]) -> list[tuple[int, ...]]:
        """Sampled responses (ids, up to and including EOS) at the analysis temperature, full vocabulary (no top-k/p)."""
        s, tok = self.settings, self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        out: list[tuple[int, ...]] = [()] * len(prompts)
        budget = max(1, s.batch_tokens)
        for batch in plan_batches([len(p) + s.max_new_tokens for p in prompts], budget, s.max_batch_size):
            width = max(len(prompts[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            attn = torch.zeros_like(ids)
            for row, i in enumerate(batch):  # left padding: generation continues every row at the same column
                ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
                attn[row, width - len(prompts[i]) :] = 1
            generated = model.generate(
                input_ids=ids.to(self.device),
                attention_mask=attn.to(self.device),
                do_sample=True,
                temperature=s.temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=s.max_new_tokens,
                eos_token_id=tok.eos_token_id,
                pad_token_id=pad,
            )[:, width:].cpu()
            for row, i in enumerate(batch):
                seq = generated[row].tolist()
                if tok.eos_token_id in seq:
                    seq = seq[: seq.index(tok.eos_token_id) + 1]
                out[i] = tuple(seq)
        return out

    def complete_responses(self, shard_index: int, items: Sequence[WorkItem]) -> list[WorkItem]:
        """Items with every missing response generated by its source model (seeded per shard, so reruns agree)."""
        missing = [i for i, it in enumerate(items) if it.response_ids is None]
        if not missing:
            return list(items)
        models = {"base": self.base, "rl": self.rl}
        torch.manual_seed(self.settings.seed * 1_000_003 + shard_index)
        items = list(items)
        for source in sorted({items[i].source for i in missing}):
            if source not in models:
                raise ValueError(f"cannot generate with {source!r}; choose 'base' or 'rl'")
            idx = [i for i in missing if items[i].source == source]
            responses = self.generate(models[source], [items[i].prompt_ids for i in idx])
            for i, r in zip(idx, responses):
                items[i] = WorkItem(items[i].sample_id, source, items[i].prompt_ids, r)
        return items

    def score(self, items: Sequence[WorkItem], on_batch: Callable[[int], None] | None = None) -> list[dict]:
        """Per item, ``{metric: (n_response_tokens,) float32 array}`` (empty arrays for empty responses)."""
        s = self.settings
        results: list[dict] = [{k: torch.zeros(0) for k in METRIC_NAMES} for _ in items]
        scored = [i for i, it in enumerate(items) if it.response_ids]
        lengths = [len(items[i].prompt_ids) + len(items[i].response_ids) for i in scored]
        for batch in plan_batches(lengths, s.batch_tokens, s.max_batch_size):
            rows = [items[scored[j]] for j in batch]
            width = max(lengths[j] for j in batch)
            ids = torch.zeros((len(rows), width), dtype=torch.long)
            attn = torch.zeros_like(ids)
            resp = torch.zeros_like(ids)
            for r, it in enumerate(rows):  # right padding
                p, n = len(it.prompt_ids), len(it.response_ids)
                ids[r, : p + n] = torch.tensor(it.prompt_ids + it.response_ids)
                attn[r, : p + n] = 1
                resp[r, p : p + n] = 1
            values = token_metrics(
                self.base,
                self.rl,
                input_ids=ids.to(self.device),
                attention_mask=attn.to(self.device),
                response_mask=resp.to(self.device),
                temperature=s.temperature,
                chunk_size=s.chunk_size,
                vocab_limit=self.vocab_limit,
            )
            values = {k: v.cpu() for k, v in values.items()}
            for r, (j, it) in enumerate(zip(batch, rows)):
                p, n = len(it.prompt_ids), len(it.response_ids)
                results[scored[j]] = {k: v[r, p : p + n] for k, v in values.items()}
            if on_batch is not None:
                on_batch(len(rows))
        if on_batch is not None and len(items) > len(scored):
            on_batch(len(items) - len(scored))
        return results

    def run(self, shard_index: int, items: Sequence[WorkItem], shard_dir: str, on_batch=None) -> int:
        """Generate missing responses, score, and write the shard's two files; returns its number of tokens."""
        items = self.complete_responses(shard_index, items)
        results = self.score(items, on_batch)
        samples_path, tokens_path = shard_paths(shard_dir, shard_index)
        write_parquet_atomic(samples_path, self._samples_table(shard_index, items))
        table = self._tokens_table(items, results)
        write_parquet_atomic(tokens_path, table)
        return table.num_rows

    def _samples_table(self, shard_index: int, items: Sequence[WorkItem]) -> pa.Table:
        return pa.Table.from_pydict(
            {
                "sample_id": [it.sample_id for it in items],
                "source": [it.source for it in items],
                "shard": [shard_index] * len(items),
                "n_prompt_tokens": [len(it.prompt_ids) for it in items],
                "n_response_tokens": [len(it.response_ids) for it in items],
                "prompt_ids": [list(it.prompt_ids) for it in items],
                "response_ids": [list(it.response_ids) for it in items],
                "response_text": [self.tokenizer.decode(list(it.response_ids)) for it in items],
            },
            schema=SAMPLE_SCHEMA,
        )

    def _tokens_table(self, items: Sequence[WorkItem], results: Sequence[dict]) -> pa.Table:
        cols: dict[str, list] = {name: [] for name in TOKEN_SCHEMA.names}
        for it, res in zip(items, results):
            n = len(it.response_ids)
            cols["sample_id"] += [it.sample_id] * n
            cols["source"] += [it.source] * n
            cols["position"] += list(range(n))
            cols["token_id"] += list(it.response_ids)
            cols["token"] += [self.token_text(t) for t in it.response_ids]
            for name in METRIC_NAMES:
                cols[name] += res[name].tolist()
        return pa.Table.from_pydict(cols, schema=TOKEN_SCHEMA)


def run_shards(
    settings: ShardSettings,
    shards: Sequence[Sequence[WorkItem]],
    shard_dir: str | Path,
    *,
    num_workers: int = 1,
    progress: bool = True,
) -> list[int]:
    """Run every shard not yet complete; returns the indices run. More than one worker uses Ray actors."""
    from tqdm.auto import tqdm

    Path(shard_dir).mkdir(parents=True, exist_ok=True)
    pending = [i for i in range(len(shards)) if not shard_complete(shard_dir, i)]
    if not pending:
        return []
    if num_workers > 1 and len(pending) > 1:
        return _run_with_ray(settings, shards, pending, str(shard_dir), num_workers, progress)
    worker = ShardWorker(settings)
    total = sum(len(shards[i]) for i in pending)
    with tqdm(total=total, desc="scoring responses", unit="resp", disable=not progress) as bar:
        for i in pending:
            worker.run(i, shards[i], str(shard_dir), on_batch=bar.update)
    return pending


def _run_with_ray(settings, shards, pending, shard_dir, num_workers, progress) -> list[int]:
    """One actor per worker (one GPU each when the cluster has GPUs), fed shards as they finish."""
    import ray
    from ray.util import ActorPool
    from tqdm.auto import tqdm

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False)
    use_gpu = settings.device != "cpu" and ray.cluster_resources().get("GPU", 0) >= 1
    actor_cls = ray.remote(num_gpus=1 if use_gpu else 0, num_cpus=1)(ShardWorker)
    actors = [actor_cls.remote(settings) for _ in range(min(num_workers, len(pending)))]
    pool = ActorPool(actors)
    jobs = pool.map_unordered(lambda actor, i: actor.run.remote(i, shards[i], shard_dir), pending)
    with tqdm(total=len(pending), desc="shards", unit="shard", disable=not progress) as bar:
        for _ in jobs:
            bar.update(1)
    for actor in actors:
        ray.kill(actor)
    return [i for i in pending if shard_complete(shard_dir, i)]
