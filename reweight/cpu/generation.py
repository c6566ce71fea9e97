"""Batched token-in/token-out sampling with per-token log-probs, on a Hugging Face causal LM.

This is the engine behind the ``hf`` rollout (:mod:`reweight.cpu.rollout`); it has no Ray in it and
can be used and tested on its own. One call decodes a batch of prompts of different lengths (left
padded, KV-cached), each row with its own sampling settings and token budget, and drops rows from
the batch as they finish.

Log-probs follow the ``logprobs_mode`` of verl's rollout config (vLLM's meaning):

- ``processed_logprobs`` (verl's default): log-softmax of the logits after temperature and
  top-k / top-p filtering, i.e. of the distribution the token was drawn from. With top-k off and
  top-p 1 this is log-softmax(logits / T), exactly what verl's actor recomputes as ``old_log_prob``.
- ``raw_logprobs``: log-softmax of the unprocessed logits.

Greedy rows (temperature 0) take the argmax and report raw log-probs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

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
        row_generators: optional RNG per prompt; a row with one samples from its own stream, so its
            output does not depend on which other requests share the batch (deterministic serving).
    """
    if logprobs_mode not in LOGPROBS_MODES:
        raise ValueError(f"logprobs_mode must be one of {LOGPROBS_MODES}, got {logprobs_mode!r}")
    if len(prompts) != len(specs):
        raise ValueError(f"{len(prompts)} prompts but {len(specs)} sampling specs")
    if row_generators is not None and len(row_generators) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(row_generators)} row generators")
    n = len(prompts)
    results = [Generated() for _ in range(n)]
    if n == 0:
        return results
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt")
    device = next(model.parameters()).device

    lengths = [len(p) for p in prompts]
    width = max(lengths)
    input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        input_ids[i, width - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
        attention_mask[i, width - len(p) :] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    input_ids, attention_mask, position_ids = input_ids.to(device), attention_mask.to(device), position_ids.to(device)

    temperature = torch.tensor([s.temperature for s in specs], dtype=torch.float32, device=device)
    top_p = torch.tensor([s.top_p for s in specs], dtype=torch.float32, device=device)
    top_k = torch.tensor([s.top_k for s in specs], dtype=torch.long, device=device)
    budget = [max(0, int(s.max_tokens)) for s in specs]
    stops = [set() if s.ignore_eos else set(eos_token_ids) for s in specs]
    for s, st in zip(specs, stops):
        st.update(s.stop_token_ids)

    active = [i for i in range(n) if budget[i] > 0]  # original row index of each live batch row
    if not active:
        return results
    if len(active) < n:
        keep = torch.tensor(active, device=device)
        input_ids, attention_mask, position_ids = input_ids[keep], attention_mask[keep], position_ids[keep]
    temperature, top_p, top_k = temperature[active], top_p[active], top_k[active]

    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True)
    cache = out.past_key_values
    logits = out.logits[:, -1, :].float()
    next_pos = position_ids[:, -1:] + 1

    while active:
        greedy = temperature <= 0
        raw_logprobs = torch.log_softmax(logits, dim=-1)
        scaled = logits / torch.where(greedy, torch.ones_like(temperature), temperature).unsqueeze(-1)
        processed = filter_logits(scaled, top_k, top_p)
        processed_logprobs = torch.log_softmax(processed, dim=-1)
        probs = processed_logprobs.exp()
        if row_generators is None:
            sampled = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        else:
            sampled = torch.stack(
                [
                    torch.multinomial(probs[row], 1, generator=row_generators[i] or generator).squeeze(-1)
                    for row, i in enumerate(active)
                ]
            )
        tokens = torch.where(greedy, logits.argmax(-1), sampled)
        report = raw_logprobs if logprobs_mode == "raw_logprobs" else processed_logprobs
        report = torch.where(greedy.unsqueeze(-1), raw_logprobs, report)
        token_logprobs = report.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)

        still = []
        for row, i in enumerate(active):
            tok = int(tokens[row])
            res = results[i]
            res.token_ids.append(tok)
            if specs[i].logprobs:
                res.log_probs.append(float(token_logprobs[row]))
            if tok in stops[i]:
                res.finish_reason = "stop"
            elif len(res.token_ids) >= budget[i]:
                res.finish_reason = "length"
            else:
                still.append(row)
        if not still:
            break
        if len(still) < len(active):
            keep = torch.tensor(still, device=device)
            cache.batch_select_indices(keep)
            tokens, attention_mask, next_pos = tokens[keep], attention_mask[keep], next_pos[keep]
            temperature, top_p, top_k = temperature[keep], top_p[keep], top_k[keep]
            active = [active[r] for r in still]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(active), 1))], dim=-1)
        out = model(
            input_ids=tokens.unsqueeze(-1),
            attention_mask=attention_mask,
            position_ids=next_pos,
            past_key_values=cache,
            use_cache=True,
        )
        cache = out.past_key_values
        logits = out.logits[:, -1, :].float()
        next_pos = next_pos + 1
    return results
