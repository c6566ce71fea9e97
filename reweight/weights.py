"""Token weights for the advantage: the paper's low-probability upweighting and comparison schemes.

Each scheme maps the probability ``p`` of a sampled token to a weight ``w`` that multiplies the
token's advantage, Ã_t = w_t · Â_t (arXiv 2603.22117, Eq. 8). Weights are constants of the
update: they are computed from detached probabilities and never carry gradient.

| scheme     | w(p)                 | source                                              |
|------------|----------------------|-----------------------------------------------------|
| ``none``   | 1                    | plain DAPO (Yu et al., arXiv 2503.14476)            |
| ``low_prob`` | 1 + α(1 − p)       | this paper (default; α = 0.2 Qwen2.5-Math-7B, 0.1 Qwen3-8B-Base) |
| ``dominate`` | α·p + (1 − α)      | Yang et al., arXiv 2505.12929 (downweights rare tokens) |
| ``focal``  | (1 − p)^α            | focal-loss-style weight                             |

Why ``low_prob`` (the paper's Lemma 3.1): the ℓ1 norm of the logit gradient of a token's term is
2|Â|(1 − π(y_t)), so RLVR already concentrates on low-probability tokens, and those carry the
large positive Δlog p that separates the RL model from its base.
"""

from __future__ import annotations

import math

import torch

SCHEMES = ("none", "low_prob", "dominate", "focal")
PROB_SOURCES = ("old", "current")


def validate(scheme: str, alpha: float, prob_source: str = "old", *, prefix: str = "") -> None:
    """Raise ``ValueError`` naming the offending key (``prefix`` + field) for bad settings."""
    if scheme not in SCHEMES:
        raise ValueError(f"{prefix}scheme={scheme!r} is not a known scheme; choose one of {list(SCHEMES)}")
    if prob_source not in PROB_SOURCES:
        raise ValueError(f"{prefix}prob_source={prob_source!r} is not known; choose one of {list(PROB_SOURCES)}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise ValueError(f"{prefix}alpha must be a real number, got {alpha!r}")
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"{prefix}alpha must be finite and >= 0, got {alpha!r}")
    if scheme == "dominate" and alpha > 1:
        raise ValueError(f"{prefix}alpha must be <= 1 for scheme 'dominate' (w = α·p + 1 − α >= 0), got {alpha!r}")


@torch.no_grad()
def token_weights(prob: torch.Tensor, scheme: str, alpha: float) -> torch.Tensor:
    """The weight of each sampled token.

    Args:
        prob: probability of each sampled token, ``(batch, response_len)``, in [0, 1].
        scheme: one of :data:`SCHEMES`.
        alpha: the scheme's strength α (>= 0).

    Returns:
        ``(batch, response_len)`` weights, same dtype as ``prob``, detached.
    """
    if scheme == "none":
        return torch.ones_like(prob)
    if scheme == "low_prob":
        return 1 + alpha * (1 - prob)
    if scheme == "dominate":
        return alpha * prob + (1 - alpha)
    if scheme == "focal":
        return (1 - prob).pow(alpha)
    raise ValueError(f"scheme={scheme!r} is not a known scheme; choose one of {list(SCHEMES)}")


def sampled_token_prob(old_log_prob: torch.Tensor, log_prob: torch.Tensor, prob_source: str) -> torch.Tensor:
    """p_t of the sampled token: from the rollout policy (``old``, the paper's) or the current one, detached."""
    if prob_source == "old":
        return old_log_prob.detach().exp()
    if prob_source == "current":
        return log_prob.detach().exp()
    raise ValueError(f"prob_source={prob_source!r} is not known; choose one of {list(PROB_SOURCES)}")
