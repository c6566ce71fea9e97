"""The two-model lockstep decoder of Algorithm 1 (selective replacement) and test-time extrapolation.

At every step both models see the same prefix. The base model proposes y_t from its top-p
nucleus; a criterion (:mod:`reweight.decoding.criteria`) decides whether to replace it; a flagged
token is resampled from π_RL (mode ``replace``) or from π_Extra ∝ π_RL · exp(γ Δlog p)
(mode ``extrapolate``); the chosen token is appended to both prefixes. In mode ``global`` the
RL side proposes and every token is drawn from π_Extra (criterion ``all``; γ = 0 is plain RL
sampling).

Engineering:

* each model keeps its own Hugging Face ``DynamicCache``: the prompt is encoded once (prefill)
  and every step feeds one token per sequence, so nothing is recomputed per token;
* prompts of different lengths are batched with left padding; position ids come from the
  attention mask (as in HF ``generate``); a sequence stops on a stop token or the length limit,
  and finished rows are dropped from the batch and both caches;
* randomness: each sequence owns a ``torch.Generator`` seeded with its seed, from which it draws
  three uniforms per step (proposal, ``random`` criterion, resample) and samples by inverse CDF.
  A sequence therefore produces the same tokens in any batch and at any batch size, and runs
  with different criteria / τ share their random numbers (common random numbers in sweeps).

Distributions: sampling uses ``log_softmax(logits / T)`` restricted to the top-p nucleus;
criteria and π_Extra use the full temperature-scaled distributions (see
:mod:`reweight.decoding.criteria`); π_Extra is truncated to its own top-p nucleus for sampling.
Model vocabulary rows beyond ``len(tokenizer)`` (padding rows of real checkpoints) are dropped.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch

from reweight.decoding.criteria import CRITERIA, check_criterion, criterion_scores, flag_positions
from reweight.decoding.distributions import (
    extrapolate_logprobs,
    sample_from_logprobs,
    temperature_logprobs,
    top_p_logprobs,
)
from reweight.models import check_same_tokenizer, eos_token_ids

MODES = ("replace", "extrapolate", "global")


@dataclass(frozen=True)
class DecodeConfig:
    """One decoding setting. Validated on construction (``ValueError`` naming the field).

    ``criterion`` / ``tau``: which base proposals to replace (see :mod:`reweight.decoding.criteria`).
    ``mode``: ``replace`` (flagged → π_RL), ``extrapolate`` (flagged → π_Extra with ``gamma``),
    ``global`` (every token from π_Extra, no base proposal; criterion ``all``).
    ``criterion`` defaults to ``logp_diff`` (``all`` in mode ``global``); ``tau`` is ignored by
    ``none`` / ``all``. ``gamma`` must be 0 in mode ``replace``.
    """

    criterion: str | None = None
    tau: float = 0.0
    mode: str = "replace"
    gamma: float = 0.0
    temperature: float = 1.0
    top_p: float = 0.7
    max_new_tokens: int = 1024

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.criterion is None:
            object.__setattr__(self, "criterion", "all" if self.mode == "global" else "logp_diff")
        if self.mode == "global" and self.criterion != "all":
            raise ValueError(
                f"mode 'global' samples every token from π_Extra; criterion must be 'all' (or unset), got {self.criterion!r}"
            )
        object.__setattr__(self, "tau", check_criterion(self.criterion, self.tau))
        gamma = float(self.gamma)
        if not math.isfinite(gamma):
            raise ValueError(f"gamma must be a finite number, got {self.gamma!r}")
        if self.mode == "replace" and gamma != 0.0:
            raise ValueError(f"gamma={gamma} has no effect in mode 'replace'; use mode 'extrapolate' or 'global'")
        object.__setattr__(self, "gamma", gamma)
        temperature = float(self.temperature)
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature!r}")
        object.__setattr__(self, "temperature", temperature)
        top_p = float(self.top_p)
        if not (0.0 < top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        object.__setattr__(self, "top_p", top_p)
        if int(self.max_new_tokens) < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens!r}")
        object.__setattr__(self, "max_new_tokens", int(self.max_new_tokens))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SequenceResult:
    """One decoded sequence.

    ``tokens``: generated token ids (a final stop token included). ``replaced_positions``: indices
    into ``tokens`` that the criterion flagged and that were therefore resampled (in mode
    ``global`` every position). ``proposed_tokens``: the base model's proposal at each replaced
    position (empty in mode ``global``); the resample may pick the same token again.
    """

    seed: int
    prompt_length: int
    tokens: list[int] = field(default_factory=list)
    replaced_positions: list[int] = field(default_factory=list)
    proposed_tokens: list[int] = field(default_factory=list)
    finish_reason: str = ""
    text: str = ""

    @property
    def n_generated(self) -> int:
        return len(self.tokens)

    @property
    def n_replaced(self) -> int:
        return len(self.replaced_positions)

    @property
    def replacement_ratio(self) -> float:
        """Replaced / generated tokens (0 for an empty generation)."""
        return self.n_replaced / self.n_generated if self.tokens else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(n_generated=self.n_generated, n_replaced=self.n_replaced, replacement_ratio=self.replacement_ratio)
        return d


@dataclass
class StepInfo:
    """What one decoding step saw, for hooks (tests, diagnostics). ``b`` = sequences still running.

    ``rows``: ``[b]`` indices of these sequences in the ``prompts`` passed to :meth:`TwoModelDecoder.decode`.
    ``logp_base`` / ``logp_rl``: ``[b, V]`` full temperature-scaled log-probs.
    ``proposal_logp``: ``[b, V]`` the top-p distribution the base proposal was drawn from (None in ``global``).
    ``replacement_logp``: ``[b, V]`` the top-p distribution flagged tokens are drawn from (π_RL or
    π_Extra); None when nothing was flagged and distributions were not requested.
    ``proposed``: ``[b]`` base proposals (None in ``global``); ``scores``: ``[b]`` criterion scores
    (None for ``none`` / ``all``); ``flagged``: ``[b]`` bool; ``tokens``: ``[b]`` emitted tokens.
    """

    step: int
    rows: torch.Tensor
    logp_base: torch.Tensor
    logp_rl: torch.Tensor
    proposal_logp: torch.Tensor | None
    replacement_logp: torch.Tensor | None
    proposed: torch.Tensor | None
    scores: torch.Tensor | None
    flagged: torch.Tensor
    tokens: torch.Tensor

    @property
    def sampled_logp(self) -> torch.Tensor:
        """``[b, V]`` the distribution each emitted token was actually drawn from."""
        if self.proposal_logp is None or self.replacement_logp is None:
            return self.replacement_logp if self.proposal_logp is None else self.proposal_logp
        return torch.where(self.flagged.unsqueeze(-1), self.replacement_logp, self.proposal_logp)


def select_tokens(
    logits_base: torch.Tensor,
    logits_rl: torch.Tensor,
    uniforms: torch.Tensor,
    config: DecodeConfig,
    *,
    step: int = 0,
    rows: torch.Tensor | None = None,
    keep_distributions: bool = False,
) -> StepInfo:
    """One step of Algorithm 1 for a batch: propose, apply the criterion, resample flagged tokens.

    Args:
        logits_base, logits_rl: ``[b, V]`` next-token logits of the two models on the same prefixes.
        uniforms: ``[b, 3]`` uniforms in [0, 1): proposal, ``random`` criterion, resample.
        config: the decoding setting.
        step, rows: copied into the result (bookkeeping for hooks).
        keep_distributions: compute ``replacement_logp`` even when nothing is flagged.

    Returns:
        a :class:`StepInfo` whose ``tokens`` are the emitted tokens.
    """
    logp_base = temperature_logprobs(logits_base, config.temperature)
    logp_rl = temperature_logprobs(logits_rl, config.temperature)
    if rows is None:
        rows = torch.arange(logp_base.shape[0], device=logp_base.device)

    def replacement() -> torch.Tensor:
        target = logp_rl if config.mode == "replace" else extrapolate_logprobs(logp_rl, logp_base, config.gamma)
        return top_p_logprobs(target, config.top_p)

    if config.mode == "global":
        replacement_logp = replacement()
        tokens = sample_from_logprobs(replacement_logp, uniforms[:, 2])
        flagged = torch.ones_like(tokens, dtype=torch.bool)
        return StepInfo(step, rows, logp_base, logp_rl, None, replacement_logp, None, None, flagged, tokens)
    proposal_logp = top_p_logprobs(logp_base, config.top_p)
    proposed = sample_from_logprobs(proposal_logp, uniforms[:, 0])
    scores = criterion_scores(config.criterion, logp_base, logp_rl, proposed, uniforms[:, 1])
    flagged = flag_positions(config.criterion, config.tau, scores, len(proposed), device=proposed.device)
    replacement_logp, tokens = None, proposed
    if keep_distributions or bool(flagged.any()):
        replacement_logp = replacement()
        tokens = torch.where(flagged, sample_from_logprobs(replacement_logp, uniforms[:, 2]), proposed)
    return StepInfo(step, rows, logp_base, logp_rl, proposal_logp, replacement_logp, proposed, scores, flagged, tokens)


def _model_vocab(model) -> int:
    return int(model.get_output_embeddings().weight.shape[0])


class TwoModelDecoder:
    """Base and RL model decoding in lockstep, each with its own KV cache.

    Args:
        base_model, rl_model: Hugging Face causal LMs (eval mode) sharing ``tokenizer``.
        tokenizer: the shared tokenizer (pad / eos ids, vocabulary size, detokenisation).
        rl_tokenizer: if given, checked with :func:`reweight.models.check_same_tokenizer` (``ValueError``).
        stop_token_ids: tokens that end a sequence; default: :func:`reweight.models.eos_token_ids` of the
            tokenizer and both models (tokenizer EOS ∪ each config and generation-config EOS).
    """

    def __init__(self, base_model, rl_model, tokenizer, *, rl_tokenizer=None, stop_token_ids: Sequence[int] | None = None):
        if rl_tokenizer is not None:
            check_same_tokenizer(tokenizer, rl_tokenizer)
        self.base_model, self.rl_model, self.tokenizer = base_model, rl_model, tokenizer
        self.vocab_size = len(tokenizer)
        for name, model in (("base", base_model), ("rl", rl_model)):
            if _model_vocab(model) < self.vocab_size:
                raise ValueError(
                    f"{name} model has {_model_vocab(model)} output rows but the tokenizer has {self.vocab_size} tokens"
                )
        if stop_token_ids is None:
            stop_token_ids = eos_token_ids(tokenizer, base_model, rl_model)
        self.stop_token_ids = sorted({int(s) for s in stop_token_ids})
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("tokenizer has neither a pad nor an eos token; cannot left-pad a batch")
        self.pad_token_id = int(pad)
        self.device = next(base_model.parameters()).device
        self.rl_device = next(rl_model.parameters()).device

    # ------------------------------------------------------------------ model calls
    def _forward(self, model, device, input_ids, attention_mask, position_ids, cache) -> torch.Tensor:
        """Run ``model`` on new tokens with its cache; return ``[b, V]`` fp32 last-position logits."""
        out = model(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            position_ids=position_ids.to(device),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1, : self.vocab_size].float().to(self.device)

    # ------------------------------------------------------------------ decoding
    @torch.inference_mode()
    def decode(
        self,
        prompts: Sequence[Sequence[int]],
        config: DecodeConfig,
        seeds: Sequence[int] | None = None,
        on_step: Callable[[StepInfo], None] | None = None,
    ) -> list[SequenceResult]:
        """Decode one continuation per prompt.

        Args:
            prompts: token-id lists (already chat-formatted), any lengths ≥ 1.
            config: the decoding setting.
            seeds: one seed per prompt (default ``0, 1, …``); a sequence's output depends only on
                its prompt, its seed and ``config``, never on the rest of the batch.
            on_step: optional hook called once per step with a :class:`StepInfo`.

        Returns:
            one :class:`SequenceResult` per prompt, in order.
        """
        from transformers import DynamicCache

        n = len(prompts)
        if seeds is None:
            seeds = list(range(n))
        if len(seeds) != n:
            raise ValueError(f"got {len(seeds)} seeds for {n} prompts")
        prompts = [list(map(int, p)) for p in prompts]
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"prompt {i} is empty")
            if max(p) >= self.vocab_size or min(p) < 0:
                raise ValueError(f"prompt {i} has token ids outside the tokenizer's vocabulary [0, {self.vocab_size})")
        results = [SequenceResult(seed=int(s), prompt_length=len(p)) for s, p in zip(seeds, prompts)]
        if n == 0:
            return results

        dev, T = self.device, config.max_new_tokens
        # Per-sequence noise: [n, T, 3] uniforms (proposal, random criterion, resample).
        noise = torch.stack(
            [torch.rand(T, 3, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64) for s in seeds]
        ).to(dev)
        width = max(len(p) for p in prompts)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        for i, p in enumerate(prompts):
            input_ids[i, width - len(p):] = torch.tensor(p)
            attention[i, width - len(p):] = 1
        input_ids, attention = input_ids.to(dev), attention.to(dev)
        position_ids = (attention.cumsum(-1) - 1).clamp_(min=0)
        next_position = attention.sum(-1)  # [b]
        cache_base, cache_rl = DynamicCache(), DynamicCache()
        logits_base = self._forward(self.base_model, self.device, input_ids, attention, position_ids, cache_base)
        logits_rl = self._forward(self.rl_model, self.rl_device, input_ids, attention, position_ids, cache_rl)

        stop_ids = torch.tensor(self.stop_token_ids, dtype=torch.long, device=dev)
        rows = torch.arange(n, device=dev)
        for step in range(T):
            u = noise[rows, step]  # [b, 3]
            info = select_tokens(logits_base, logits_rl, u, config, step=step, rows=rows,
                                 keep_distributions=on_step is not None)
            if on_step is not None:
                on_step(info)
            tokens, flagged, proposed = info.tokens, info.flagged, info.proposed

            stopped = torch.isin(tokens, stop_ids)
            for r, tok, flag, prop, stop in zip(
                rows.tolist(), tokens.tolist(), flagged.tolist(),
                (proposed.tolist() if proposed is not None else [None] * len(rows)), stopped.tolist(),
            ):
                res = results[r]
                if flag:
                    res.replaced_positions.append(len(res.tokens))
                    if prop is not None:
                        res.proposed_tokens.append(prop)
                res.tokens.append(tok)
                if stop:
                    res.finish_reason = "stop"
            if step == T - 1:
                break
            running = ~stopped
            if not bool(running.any()):
                break
            if not bool(running.all()):
                keep = running.nonzero().squeeze(-1)
                rows, tokens, attention, next_position = rows[keep], tokens[keep], attention[keep], next_position[keep]
                cache_base.batch_select_indices(keep.to(self.device))
                cache_rl.batch_select_indices(keep.to(self.rl_device))
            attention = torch.cat([attention, attention.new_ones((len(rows), 1))], dim=-1)
            step_ids, step_pos = tokens.unsqueeze(-1), next_position.unsqueeze(-1)
            logits_base = self._forward(self.base_model, self.device, step_ids, attention, step_pos, cache_base)
            logits_rl = self._forward(self.rl_model, self.rl_device, step_ids, attention, step_pos, cache_rl)
            next_position = next_position + 1

        stop_set = set(self.stop_token_ids)
        for res in results:
            if not res.finish_reason:
                res.finish_reason = "length"
            body = res.tokens[:-1] if res.tokens and res.tokens[-1] in stop_set else res.tokens
            res.text = self.tokenizer.decode(body, skip_special_tokens=True)
        return results


__all__ = ["CRITERIA", "MODES", "DecodeConfig", "SequenceResult", "StepInfo", "TwoModelDecoder", "check_same_tokenizer",
           "select_tokens"]
