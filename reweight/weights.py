"""Token weights for the advantage: the paper's low-probability upweighting and comparison schemes.

Each scheme maps the probability ``p`` of a sampled token to a weight ``w`` that multiplies the
token's advantage, Ã_t = w_t · Â_t (arXiv 2603.22117, Eq. 8). Weights are constants of the
update: they are computed from detached probabilities and never carry gradient.

| scheme       | w(p)                 | source                                                   |
|--------------|----------------------|----------------------------------------------------------|
| ``none``     | 1                    | plain DAPO (Yu et al., arXiv 2503.14476)                 |
| ``low_prob`` | 1 + α(1 − p)         | this paper (default; α = 0.2 Qwen2.5-Math-7B, 0.1 Qwen3-8B-Base) |
| ``dominate`` | α·p + (1 − α)        | Yang et al., arXiv 2505.12929 (downweights rare tokens)  |
| ``focal``    | (1 − p)^α            | focal-loss-style weight (Lin et al., arXiv 1708.02002)   |
| ``middle``   | α + p(1 − p)         | variant in this paper's released code; peaks at p = 0.5  |
| ``normalize``| 1 / (1 + α − p)      | control from this paper's Lemma 3.1: w·(1 − p) ≈ 1; α > 0 |
| ``forking``  | 1[H_t ≥ τ_ρ]         | Wang et al., arXiv 2506.01939: train on the top ρ = α of tokens by entropy |
| ``entropy_bonus`` | 1, and Â' = Â + min(α·H_t, |Â|/κ) | Cheng et al., arXiv 2506.14758 (advantage shaping) |

The last two depend on the token's entropy H_t, not on p: ``forking`` keeps the tokens whose entropy
is at or above τ_ρ, the ⌈ρN⌉-th largest of the N entropies of the *global* batch (see
:func:`top_fraction_threshold`), and ``entropy_bonus`` adds a non-negative, clipped bonus to the
advantage instead of weighting it (:func:`entropy_bonus`). ``unit_mean``
(:func:`unit_mean_scale`) rescales any scheme's weights to mean 1 over the global batch.

Why ``low_prob`` (the paper's Lemma 3.1): the ℓ1 norm of the logit gradient of a token's term is
2|Â|(1 − π(y_t)), so RLVR already concentrates on low-probability tokens, and those carry the
large positive Δlog p that separates the RL model from its base. ``normalize`` cancels that
(1 − p) factor, so it asks whether *concentrating* on low-probability tokens is what helps.

Sign selection (``apply_to``): ``all`` weights every token; ``positive`` / ``negative`` weight only
tokens whose advantage is > 0 / < 0, the others keep w = 1 (which half of the samples gains from the
weight). ``docs/weights.md`` describes every scheme; ``docs/weights.png`` plots w(p).
"""

from __future__ import annotations

import math

import torch

# Schemes whose weight is a function w(p) of the sampled token's probability (:data:`SCHEME_WEIGHTS`).
PROB_SCHEMES = ("none", "low_prob", "dominate", "focal", "middle", "normalize")
# Schemes whose weight or advantage depends on the token entropy H_t instead of p.
ENTROPY_SCHEMES = ("forking", "entropy_bonus")
SCHEMES = PROB_SCHEMES + ENTROPY_SCHEMES
# entropy_bonus's κ (> 1): the bonus is at most |Â|/κ, so it never flips a negative advantage (arXiv 2506.14758).
DEFAULT_KAPPA = 2.0
PROB_SOURCES = ("old", "current")
APPLY_TO = ("all", "positive", "negative")
# The config's default α (the paper's value for Qwen2.5-Math-7B), shared by every scheme.
DEFAULT_ALPHA = 0.2


def weight_none(prob: torch.Tensor, alpha: float) -> torch.Tensor:
    """w = 1 (plain DAPO); ``(batch, response_len)`` -> same shape."""
    return torch.ones_like(prob)


def weight_low_prob(prob: torch.Tensor, alpha: float) -> torch.Tensor:
    """w = 1 + α(1 − p), in [1, 1 + α] (arXiv 2603.22117, Eq. 8); ``(batch, response_len)``."""
    return 1 + alpha * (1 - prob)


def weight_dominate(prob: torch.Tensor, alpha: float) -> torch.Tensor:
    """w = α·p + (1 − α), in [1 − α, 1] (arXiv 2505.12929); ``(batch, response_len)``."""
    return alpha * prob + (1 - alpha)


def weight_focal(prob: torch.Tensor, alpha: float) -> torch.Tensor:
    """w = (1 − p)^α, in [0, 1] (focal-loss style; 0^0 = 1); ``(batch, response_len)``."""
    return (1 - prob).pow(alpha)


def weight_middle(prob: torch.Tensor, alpha: float) -> torch.Tensor:
    """w = α + p(1 − p), in [α, α + 1/4], largest at p = 0.5; ``(batch, response_len)``."""
    return alpha + prob * (1 - prob)


def weight_normalize(prob: torch.Tensor, alpha: float) -> torch.Tensor:
    """w = 1 / (1 + α − p), in [1/(1 + α), 1/α] for α > 0; ``(batch, response_len)``.

    Computed as 1 / ((1 − p) + α) with p clamped to <= 1: in low precision 1 + α can round to 1
    for small α, and 1 − p >= 0 keeps the denominator >= α, so w stays finite.
    """
    return ((1 - prob.clamp(max=1)) + alpha).reciprocal()


SCHEME_WEIGHTS = {
    "none": weight_none,
    "low_prob": weight_low_prob,
    "dominate": weight_dominate,
    "focal": weight_focal,
    "middle": weight_middle,
    "normalize": weight_normalize,
}


def validate(
    scheme: str,
    alpha: float,
    prob_source: str = "old",
    *,
    apply_to: str = "all",
    prefix: str = "",
    kappa: float = DEFAULT_KAPPA,
    unit_mean: bool = False,
) -> None:
    """Raise ``ValueError`` naming the offending key (``prefix`` + field) for bad settings."""
    if scheme not in SCHEMES:
        raise ValueError(f"{prefix}scheme={scheme!r} is not a known scheme; choose one of {list(SCHEMES)}")
    if prob_source not in PROB_SOURCES:
        raise ValueError(f"{prefix}prob_source={prob_source!r} is not known; choose one of {list(PROB_SOURCES)}")
    if apply_to not in APPLY_TO:
        raise ValueError(f"{prefix}apply_to={apply_to!r} is not known; choose one of {list(APPLY_TO)}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise ValueError(f"{prefix}alpha must be a real number, got {alpha!r}")
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"{prefix}alpha must be finite and >= 0, got {alpha!r}")
    if scheme == "dominate" and alpha > 1:
        raise ValueError(f"{prefix}alpha must be <= 1 for scheme 'dominate' (w = α·p + 1 − α >= 0), got {alpha!r}")
    if scheme == "normalize" and alpha == 0:
        raise ValueError(
            f"{prefix}alpha={alpha!r} with {prefix}scheme=normalize: alpha must be > 0 "
            f"(w = 1 / (1 + α − p) is infinite at p = 1 when α = 0)"
        )
    if scheme == "forking" and not 0 < alpha <= 1:
        raise ValueError(
            f"{prefix}alpha={alpha!r} with {prefix}scheme=forking: alpha is the kept fraction ρ and must be in (0, 1]"
        )
    if scheme == "entropy_bonus" and apply_to != "all":
        raise ValueError(
            f"{prefix}apply_to={apply_to!r} with {prefix}scheme=entropy_bonus: the bonus applies to every token; "
            f"use apply_to=all"
        )
    if isinstance(kappa, bool) or not isinstance(kappa, (int, float)) or not math.isfinite(kappa) or not kappa > 1:
        raise ValueError(f"{prefix}kappa must be a finite number > 1 (the bonus is at most |Â|/κ), got {kappa!r}")
    if not isinstance(unit_mean, bool):
        raise ValueError(f"{prefix}unit_mean must be true or false, got {unit_mean!r}")
    if unit_mean and prob_source != "old" and scheme not in ENTROPY_SCHEMES:
        raise ValueError(
            f"{prefix}unit_mean=true needs {prefix}prob_source=old: the global mean of w is taken before the "
            f"update's forward pass, where only the rollout policy's p is known (got prob_source={prob_source!r})"
        )


@torch.no_grad()
def token_weights(prob: torch.Tensor, scheme: str, alpha: float) -> torch.Tensor:
    """The weight of each sampled token.

    Args:
        prob: probability of each sampled token, ``(batch, response_len)``, in [0, 1].
        scheme: one of :data:`PROB_SCHEMES` (the entropy schemes have no w(p)).
        alpha: the scheme's strength α (>= 0; > 0 for ``normalize``).

    Returns:
        ``(batch, response_len)`` weights, same dtype as ``prob``, detached.
    """
    fn = SCHEME_WEIGHTS.get(scheme)
    if fn is None:
        raise ValueError(f"scheme={scheme!r} has no weight function of p; choose one of {list(PROB_SCHEMES)}")
    return fn(prob, alpha)


@torch.no_grad()
def select_by_sign(weights: torch.Tensor, advantages: torch.Tensor, apply_to: str) -> torch.Tensor:
    """Keep ``weights`` where the advantage has the ``apply_to`` sign, 1 elsewhere (no host sync).

    Args:
        weights: token weights, ``(batch, response_len)``.
        advantages: Â, ``(batch, response_len)``.
        apply_to: ``all`` (weights unchanged), ``positive`` (Â > 0) or ``negative`` (Â < 0).

    Returns:
        ``(batch, response_len)`` weights, dtype of ``weights``; tokens with Â = 0 get 1 unless ``all``.
    """
    if apply_to == "all":
        return weights
    if apply_to == "positive":
        return torch.where(advantages > 0, weights, 1.0)
    if apply_to == "negative":
        return torch.where(advantages < 0, weights, 1.0)
    raise ValueError(f"apply_to={apply_to!r} is not known; choose one of {list(APPLY_TO)}")


def sampled_token_prob(old_log_prob: torch.Tensor, log_prob: torch.Tensor, prob_source: str) -> torch.Tensor:
    """p_t of the sampled token: from the rollout policy (``old``, the paper's) or the current one, detached."""
    if prob_source == "old":
        return old_log_prob.detach().exp()
    if prob_source == "current":
        return log_prob.detach().exp()
    raise ValueError(f"prob_source={prob_source!r} is not known; choose one of {list(PROB_SOURCES)}")


@torch.no_grad()
def top_fraction_threshold(entropy: torch.Tensor, rho: float) -> torch.Tensor:
    """τ_ρ: the k-th largest of ``entropy`` with k = ⌈ρ·N⌉, so that exactly k of the N values are >= τ_ρ
    (more only on ties). ``forking`` keeps the tokens with H_t >= τ_ρ.

    Args:
        entropy: the entropies of every valid response token of the global batch, ``(N,)``, N >= 1.
        rho: the kept fraction ρ in (0, 1].

    Returns:
        a 0-d tensor, dtype of ``entropy``.
    """
    n = entropy.numel()
    k = max(1, math.ceil(rho * n - 1e-9))  # 1e-9: ρ·N computed as 0.2·10 = 2.0000000000000004 is still 2
    return torch.kthvalue(entropy.reshape(-1), n - k + 1).values


@torch.no_grad()
def forking_weights(entropy: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """w = 1[H_t >= τ_ρ] (arXiv 2506.01939): 1 on the high-entropy "forking" tokens, 0 elsewhere.

    Args:
        entropy: H_t of each token, ``(batch, response_len)``.
        threshold: τ_ρ from :func:`top_fraction_threshold` over the global batch.

    Returns:
        ``(batch, response_len)`` weights in {0, 1}, dtype of ``entropy``.
    """
    return (entropy >= threshold).to(entropy.dtype)


@torch.no_grad()
def entropy_bonus(advantages: torch.Tensor, entropy: torch.Tensor, alpha: float, kappa: float) -> torch.Tensor:
    """ψ_t = min(α·H_t, |Â_t|/κ) >= 0, the bonus of arXiv 2506.14758's shaped advantage Â' = Â + ψ.

    H_t is detached (no gradient flows through the bonus). ψ >= 0 raises every advantage; the clip at
    |Â|/κ with κ > 1 keeps a negative advantage negative (Â + ψ <= Â(1 − 1/κ) < 0), and Â = 0 gets no bonus.

    Args:
        advantages: Â, ``(batch, response_len)``; entropy: H_t, ``(batch, response_len)``.
        alpha: α >= 0 (the paper's 0.4); kappa: κ > 1 (the paper's 2).

    Returns:
        ``(batch, response_len)`` bonus, dtype of ``advantages``.
    """
    return torch.minimum(alpha * entropy.detach().to(advantages.dtype), advantages.abs() / kappa)


def unit_mean_scale(weight_sum: float, count: float) -> float:
    """1 / mean(w) over the global batch: multiplying w by it gives weights of mean 1 (1 when ``count`` or
    ``weight_sum`` is 0: nothing to rescale)."""
    if count <= 0 or weight_sum <= 0:
        return 1.0
    return count / weight_sum
