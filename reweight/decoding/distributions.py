"""Next-token distribution arithmetic for the two-model decoder (pure functions on log-probs).

Every function here takes log-probabilities over the **last** dimension (the vocabulary), shape
``[..., V]``, and is NaN-free in the presence of ``-inf`` entries (tokens outside a top-p nucleus,
masked vocabulary rows). These are single-step quantities; the teacher-forced, chunked,
whole-sequence versions belong to :mod:`reweight.analysis`.
"""

from __future__ import annotations

import math

import torch


def _check_finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return value


def extrapolate_logprobs(logp_rl: torch.Tensor, logp_base: torch.Tensor, gamma: float) -> torch.Tensor:
    """Normalised log-probs of the extrapolated policy π_Extra ∝ π_RL · exp(γ · Δlog p).

    ``log π_Extra = (1 + γ) · log π_RL − γ · log π_Base − logsumexp(…)`` over the last dimension.

    Args:
        logp_rl: ``[..., V]`` log-probs of the RL model (need not be normalised; only differences
            within a row matter).
        logp_base: ``[..., V]`` log-probs of the base model, same shape.
        gamma: extrapolation strength γ (finite). γ = 0 returns ``log_softmax(logp_rl)``.

    Returns:
        ``[..., V]`` normalised log-probs.

    ``-inf`` handling (no NaN is produced):

    * a token with ``logp_rl = -inf`` has π_Extra = 0 (π_Extra ∝ π_RL · ratio^γ);
    * a token with ``logp_base = -inf`` but finite ``logp_rl`` has an unbounded ratio π_RL/π_Base;
      its base log-prob is imputed as the smallest finite base log-prob in its row (the base model
      is taken to rate it no higher than its least likely visible token). A row whose base log-probs
      are all ``-inf`` is treated as uniform under the base (π_Extra ∝ π_RL^(1+γ)).
    * if every entry of a row of ``logp_rl`` is ``-inf`` the output row is all ``-inf``.
    """
    gamma = _check_finite("gamma", gamma)
    if logp_rl.shape != logp_base.shape:
        raise ValueError(f"logp_rl {tuple(logp_rl.shape)} and logp_base {tuple(logp_base.shape)} differ in shape")
    if gamma == 0.0:
        return torch.log_softmax(logp_rl, dim=-1)
    base_finite = torch.isfinite(logp_base)
    row_floor = torch.where(base_finite, logp_base, torch.full_like(logp_base, float("inf"))).amin(-1, keepdim=True)
    row_floor = torch.where(torch.isfinite(row_floor), row_floor, torch.zeros_like(row_floor))
    base = torch.where(base_finite, logp_base, row_floor)
    rl_finite = torch.isfinite(logp_rl)
    safe_rl = torch.where(rl_finite, logp_rl, torch.zeros_like(logp_rl))
    scores = (1.0 + gamma) * safe_rl - gamma * base
    scores = torch.where(rl_finite, scores, torch.full_like(scores, float("-inf")))
    norm = torch.logsumexp(scores, dim=-1, keepdim=True)
    norm = torch.where(torch.isfinite(norm), norm, torch.zeros_like(norm))  # all -inf row stays -inf
    return scores - norm


def temperature_logprobs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``log_softmax(logits / T)`` in fp32: ``[..., V]`` → ``[..., V]``."""
    return torch.log_softmax(logits.float() / temperature, dim=-1)


def top_p_logprobs(logp: torch.Tensor, top_p: float) -> torch.Tensor:
    """Restrict a distribution to its top-p nucleus and renormalise.

    Keeps the smallest set of most likely tokens whose total mass reaches ``top_p`` (a token is
    kept when the mass of the tokens ranked above it is < ``top_p``; the most likely token is
    always kept), the same rule as Hugging Face's and vLLM's top-p.

    Args:
        logp: ``[..., V]`` normalised log-probs.
        top_p: in (0, 1]; 1 returns ``logp`` unchanged.

    Returns:
        ``[..., V]`` log-probs, ``-inf`` outside the nucleus, normalised over the nucleus.
    """
    if top_p >= 1.0:
        return logp
    sorted_logp, order = logp.sort(dim=-1, descending=True)
    sorted_p = sorted_logp.exp()
    mass_before = sorted_p.cumsum(-1) - sorted_p
    keep_sorted = mass_before < top_p
    keep_sorted[..., 0] = True
    keep = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
    truncated = torch.where(keep, logp, torch.full_like(logp, float("-inf")))
    return truncated - torch.logsumexp(truncated, dim=-1, keepdim=True)


def sample_from_logprobs(logp: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: one token per row from ``[B, V]`` log-probs with given ``[B]`` uniforms.

    Deterministic given ``uniform`` (values in [0, 1)), so each sequence can draw its noise from
    its own generator and a batch samples exactly what its rows would sample one at a time.
    Tokens with probability 0 are never returned.

    Returns:
        ``[B]`` int64 token ids.
    """
    probs = logp.exp()
    cdf = probs.cumsum(-1)
    target = (uniform.to(cdf.dtype) * cdf[..., -1]).unsqueeze(-1)
    idx = torch.searchsorted(cdf, target, right=True).clamp_(max=logp.shape[-1] - 1)
    # Guard against rounding at the top end landing on a zero-probability tail token.
    last_positive = (probs > 0).long().cumsum(-1).argmax(-1, keepdim=True)
    return torch.minimum(idx, last_positive).squeeze(-1)


def entropy(logp: torch.Tensor) -> torch.Tensor:
    """Shannon entropy ``−Σ_v π(v) log π(v)`` in nats: ``[..., V]`` → ``[...]`` (0·log 0 = 0)."""
    p = logp.exp()
    return -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)


def kl_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """``KL(p ‖ q) = Σ_v p(v) (log p(v) − log q(v))``: ``[..., V]`` × ``[..., V]`` → ``[...]``.

    Terms with p(v) = 0 contribute 0; a token with p(v) > 0 and q(v) = 0 gives +inf.
    """
    p = logp.exp()
    diff = torch.where(p > 0, logp - logq, torch.zeros_like(logp))
    return (p * diff).sum(-1)
