"""Continuous-batching token-in/token-out sampling with per-token log-probs on a Hugging Face causal LM.

This is the engine behind the ``hf`` rollout (:mod:`reweight.cpu.rollout`); it has no Ray in it and
can be used and tested on its own. :class:`DecodeBatch` keeps one KV-cached batch of sequences;
requests join it whenever they arrive (their prompts are prefilled and their caches merged in,
left-padded) and leave it as soon as they finish, so a trickle of requests -- which is how verl's
agent loop and DAPO's group refills send them -- still decodes as one batch. Each row has its own
sampling settings, token budget and, optionally, its own RNG (then its tokens do not depend on
which other requests shared the batch). :func:`generate_batch` is the one-shot form.

Log-probs follow the ``logprobs_mode`` of verl's rollout config (vLLM's meaning):

- ``processed_logprobs`` (verl's default): log-softmax of the logits after temperature and
  top-k / top-p filtering, i.e. of the distribution the token was drawn from. With top-k off and
  top-p 1 this is log-softmax(logits / T), exactly what verl's actor recomputes as ``old_log_prob``.
- ``raw_logprobs``: log-softmax of the unprocessed logits.

Greedy rows (temperature 0) take the argmax and report raw log-probs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

LOGPROBS_MODES = ("processed_logprobs", "raw_logprobs")


@dataclass
class SamplingSpec:
    """One request's sampling settings (vLLM ``SamplingParams`` subset that verl's agent loop sends)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    ignore_eos: bool = False
    logprobs: bool = True
    stop_token_ids: tuple[int, ...] = ()


@dataclass
class Generated:
    token_ids: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    finish_reason: str = "length"  # "stop" (EOS / stop token) or "length"


@dataclass
class _Row:
    prompt: list[int]
    spec: SamplingSpec
    stops: set[int]
    generator: torch.Generator | None
    on_done: Callable[[Generated], Any] | None
    result: Generated = field(default_factory=Generated)


def filter_logits(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Mask (to -inf) what top-k / top-p exclude; per row; ``top_k <= 0`` and ``top_p >= 1`` are off.

    Ties at the top-k boundary are kept; top-p keeps the smallest prefix of the sorted distribution
    whose mass reaches ``top_p`` (the token that crosses it included), as vLLM and HF do.
    """
    vocab = logits.shape[-1]
    out = logits
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab))
    if bool((k < vocab).any()):
        kth = torch.sort(out, dim=-1, descending=True).values.gather(-1, (k - 1).unsqueeze(-1))
        out = out.masked_fill(out < kth, float("-inf"))
    if bool((top_p < 1.0).any()):
        sorted_logits, order = torch.sort(out, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = mass_before >= top_p.unsqueeze(-1)
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


KVPair = tuple[torch.Tensor, torch.Tensor]  # one layer's (keys, values), each (batch, kv_heads, time, head_dim)


def map_kv(fn: Callable[..., KVPair], cache: Any, *others: Any) -> None:
    """Replace, layer by layer, the keys and values of a transformers ``DynamicCache`` in place.

    ``fn((keys, values), *[(keys, values) of the same layer of each cache in others])`` returns the
    layer's new ``(keys, values)``, each ``(batch, kv_heads, time, head_dim)``. transformers has no public
    API to edit a cache's tensors; this is the one place that relies on its layout (``cache.layers[i]``
    with ``.keys`` / ``.values``, transformers 5.x as pinned in pyproject.toml), and it fails loudly,
    naming the installed version, when that layout is not there.
    """
    caches = (cache, *others)
    if not all(
        isinstance(getattr(c, "layers", None), list)
        and all(isinstance(getattr(layer, "keys", None), torch.Tensor) and isinstance(getattr(layer, "values", None), torch.Tensor)
                for layer in c.layers)
        for c in caches
    ):
        import transformers

        raise RuntimeError(
            f"reweight.cpu.generation edits the KV cache through DynamicCache.layers[i].keys/.values, which transformers "
            f"{transformers.__version__} ({type(cache).__name__}) does not have; install the transformers version "
            "pyproject.toml pins (5.x)"
        )
    if len({len(c.layers) for c in caches}) != 1:
        raise ValueError(f"caches with different numbers of layers: {[len(c.layers) for c in caches]}")
    for i, layer in enumerate(cache.layers):
        layer.keys, layer.values = fn((layer.keys, layer.values), *[(c.layers[i].keys, c.layers[i].values) for c in others])


def _left_pad(t: torch.Tensor, width: int, dim: int, value: float = 0) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_full(shape, value), t], dim=dim)


class DecodeBatch:
    """A running KV-cached batch that requests join (:meth:`add`) and leave as they finish.

    Call :meth:`step` repeatedly: it admits the rows added since the last call (one prefill
    forward for all of them), samples one token for every live row, retires finished rows (calling
    their ``on_done``) and runs the decode forward for the rest. Not thread-safe: drive it from one
    thread and hand it requests through your own queue.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        eos_token_ids: Sequence[int],
        pad_token_id: int,
        generator: torch.Generator | None = None,
        logprobs_mode: str = "processed_logprobs",
    ):
        if logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(f"logprobs_mode must be one of {LOGPROBS_MODES}, got {logprobs_mode!r}")
        self.model = model
        self.eos_token_ids = [int(t) for t in eos_token_ids]
        self.pad_token_id = int(pad_token_id)
        self.generator = generator
        self.logprobs_mode = logprobs_mode
        self.device = next(model.parameters()).device
        self._new: list[_Row] = []
        self._rows: list[_Row] = []
        self._cache = None
        self._mask: torch.Tensor | None = None  # [B, T]
        self._next_pos: torch.Tensor | None = None  # [B, 1]
        self._logits: torch.Tensor | None = None  # [B, V], next-token logits of each live row
        self.forwards = 0

    def __len__(self) -> int:
        return len(self._rows) + len(self._new)

    def unfinished_callbacks(self) -> list[Callable[[Generated], Any] | None]:
        """The ``on_done`` of every request not finished yet (decoding, or added and waiting for :meth:`step`)."""
        return [r.on_done for r in self._rows + self._new]

    def add(
        self,
        prompt: Sequence[int],
        spec: SamplingSpec,
        *,
        generator: torch.Generator | None = None,
        on_done: Callable[[Generated], Any] | None = None,
    ) -> Generated:
        """Queue a request; returns its (filled as it decodes) :class:`Generated`."""
        if len(prompt) == 0:
            raise ValueError("empty prompt")
        stops = set() if spec.ignore_eos else set(self.eos_token_ids)
        stops.update(int(t) for t in spec.stop_token_ids)
        row = _Row([int(t) for t in prompt], spec, stops, generator, on_done)
        if spec.max_tokens <= 0:
            self._finish(row)
        else:
            self._new.append(row)
        return row.result

    def _finish(self, row: _Row) -> None:
        if row.on_done is not None:
            row.on_done(row.result)

    # ------------------------------------------------------------------ forward passes
    def _forward(self, input_ids, attention_mask, position_ids, cache):
        self.forwards += 1
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        return out.past_key_values, out.logits[:, -1, :].float()

    def _admit(self) -> None:
        rows, self._new = self._new, []
        width = max(len(r.prompt) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r.prompt) :] = torch.tensor(r.prompt, dtype=torch.long)
            mask[i, width - len(r.prompt) :] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        ids, mask, pos = ids.to(self.device), mask.to(self.device), pos.to(self.device)
        cache, logits = self._forward(ids, mask, pos, None)
        if not self._rows:
            self._cache, self._mask, self._logits = cache, mask, logits
            self._next_pos = pos[:, -1:] + 1
        else:
            t = max(self._mask.shape[1], width)

            def stack(old: KVPair, new: KVPair) -> KVPair:  # running rows, then the new ones, left-padded to t
                return tuple(torch.cat([_left_pad(o, t, 2), _left_pad(n, t, 2)], dim=0) for o, n in zip(old, new))

            map_kv(stack, self._cache, cache)
            self._mask = torch.cat([_left_pad(self._mask, t, 1), _left_pad(mask, t, 1)], dim=0)
            self._logits = torch.cat([self._logits, logits], dim=0)
            self._next_pos = torch.cat([self._next_pos, pos[:, -1:] + 1], dim=0)
        self._rows.extend(rows)

    def _keep(self, keep: list[int]) -> None:
        idx = torch.tensor(keep, device=self.device)
        self._cache.batch_select_indices(idx)
        self._mask, self._next_pos, self._logits = self._mask[idx], self._next_pos[idx], self._logits[idx]
        self._rows = [self._rows[i] for i in keep]
        # drop leading columns no live row attends to
        live = self._mask.any(dim=0).nonzero()
        first = int(live[0]) if len(live) else self._mask.shape[1]
        if first > 0:
            self._mask = self._mask[:, first:]
            map_kv(lambda kv: (kv[0][:, :, first:], kv[1][:, :, first:]), self._cache)

    # ------------------------------------------------------------------ one decoding step
    @torch.no_grad()
    def step(self) -> int:
        """Admit new rows, sample one token per live row, retire finished rows; returns live rows."""
        if self._new:
            self._admit()
        if not self._rows:
            return 0
        rows = self._rows
        dev = self.device
        temperature = torch.tensor([r.spec.temperature for r in rows], dtype=torch.float32, device=dev)
        top_p = torch.tensor([r.spec.top_p for r in rows], dtype=torch.float32, device=dev)
        top_k = torch.tensor([r.spec.top_k for r in rows], dtype=torch.long, device=dev)
        logits = self._logits
        greedy = temperature <= 0
        raw_logprobs = torch.log_softmax(logits, dim=-1)
        scaled = logits / torch.where(greedy, torch.ones_like(temperature), temperature).unsqueeze(-1)
        processed_logprobs = torch.log_softmax(filter_logits(scaled, top_k, top_p), dim=-1)
        probs = processed_logprobs.exp()
        if all(r.generator is None for r in rows):
            sampled = torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)
        else:
            sampled = torch.stack(
                [torch.multinomial(probs[i], 1, generator=r.generator or self.generator)[0] for i, r in enumerate(rows)]
            )
        tokens = torch.where(greedy, logits.argmax(-1), sampled)
        report = raw_logprobs if self.logprobs_mode == "raw_logprobs" else processed_logprobs
        report = torch.where(greedy.unsqueeze(-1), raw_logprobs, report)
        token_logprobs = report.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).tolist()

        keep = []
        for i, (r, tok) in enumerate(zip(rows, tokens.tolist())):
            res = r.result
            res.token_ids.append(tok)
            if r.spec.logprobs:
                res.log_probs.append(token_logprobs[i])
            if tok in r.stops:
                res.finish_reason = "stop"
                self._finish(r)
            elif len(res.token_ids) >= r.spec.max_tokens:
                res.finish_reason = "length"
                self._finish(r)
            else:
                keep.append(i)
        if not keep:
            self._rows, self._cache, self._mask, self._next_pos, self._logits = [], None, None, None, None
            return 0
        if len(keep) < len(rows):
            self._keep(keep)
            tokens = tokens[torch.tensor(keep, device=dev)]
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(keep), 1))], dim=-1)
        self._cache, self._logits = self._forward(tokens.unsqueeze(-1), self._mask, self._next_pos, self._cache)
        self._next_pos = self._next_pos + 1
        return len(self._rows)


@torch.no_grad()
def generate_batch(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    specs: Sequence[SamplingSpec],
    *,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    generator: torch.Generator | None = None,
    logprobs_mode: str = "processed_logprobs",
    row_generators: Sequence[torch.Generator | None] | None = None,
) -> list[Generated]:
    """Decode every prompt in one KV-cached batch; return tokens, log-probs and finish reasons.

    Args:
        model: a causal LM taking ``input_ids, attention_mask, position_ids, past_key_values``.
        prompts: token ids per request (lengths may differ).
        specs: one :class:`SamplingSpec` per prompt.
        eos_token_ids: tokens that end a response (kept in the output, as vLLM does).
        pad_token_id: used for left padding only.
        generator: torch RNG for sampling (reproducible runs).
        logprobs_mode: see the module docstring.
        row_generators: optional RNG per prompt; a row with one samples from its own stream.
    """
    if len(prompts) != len(specs):
        raise ValueError(f"{len(prompts)} prompts but {len(specs)} sampling specs")
    if row_generators is not None and len(row_generators) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(row_generators)} row generators")
    batch = DecodeBatch(
        model, eos_token_ids=eos_token_ids, pad_token_id=pad_token_id, generator=generator, logprobs_mode=logprobs_mode
    )
    results = [
        batch.add(p, s, generator=None if row_generators is None else row_generators[i])
        for i, (p, s) in enumerate(zip(prompts, specs))
    ]
    while batch.step():
        pass
    return results
