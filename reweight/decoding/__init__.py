"""Selective token replacement (the paper's Algorithm 1) and test-time extrapolation.

* :func:`extrapolate_logprobs` — π_Extra ∝ π_RL · exp(γ Δlog p), normalised;
* :class:`TwoModelDecoder` / :class:`DecodeConfig` — the KV-cached two-model lockstep decoder;
* :mod:`reweight.decoding.criteria` — the replacement criteria;
* :mod:`reweight.decoding.sweep` — τ / γ sweeps, results table and the paper's Fig. 1(c) / Fig. 4;
* ``reweight-decode`` (:mod:`reweight.decoding.cli`) — the command line.
"""

from reweight.decoding.criteria import CRITERIA, criterion_scores, flag_positions
from reweight.decoding.decoder import (
    MODES,
    DecodeConfig,
    SequenceResult,
    StepInfo,
    TwoModelDecoder,
    check_same_tokenizer,
    select_tokens,
)
from reweight.decoding.distributions import (
    entropy,
    extrapolate_logprobs,
    kl_divergence,
    sample_from_logprobs,
    temperature_logprobs,
    top_p_logprobs,
)

__all__ = [
    "CRITERIA",
    "MODES",
    "DecodeConfig",
    "SequenceResult",
    "StepInfo",
    "TwoModelDecoder",
    "check_same_tokenizer",
    "criterion_scores",
    "entropy",
    "extrapolate_logprobs",
    "flag_positions",
    "kl_divergence",
    "sample_from_logprobs",
    "select_tokens",
    "temperature_logprobs",
    "top_p_logprobs",
]
