"""What the ``reweight`` loss needs beyond verl's policy-loss arguments, for one micro-batch.

verl 0.9.1 calls a policy loss with (old_log_prob, log_prob, advantages, response_mask, loss_agg_mode,
config, rollout_is_weights) only. Three settings need more:

- ``scheme=forking`` needs each token's entropy and τ_ρ, the top-ρ threshold over the *global* batch;
- ``scheme=entropy_bonus`` needs each token's current-policy entropy;
- ``unit_mean`` needs 1 / mean(w) over the global batch.

:mod:`reweight.actor_hook` (the one patch to verl's actor) computes the global values once per mini-batch,
before the micro-batch loop, and sets them here around each micro-batch's loss call; the loss reads them
with :func:`current`. Tests set them with :func:`loss_inputs`. Nothing else is passed this way.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator, Optional

import torch


@dataclass(frozen=True)
class LossInputs:
    """Per-micro-batch extras of the ``reweight`` loss.

    Attributes:
        entropy: H_t of each token, ``(batch, response_len)`` like ``old_log_prob``, detached; the rollout
            policy's for ``forking`` (the one τ_ρ was taken over), the current policy's for ``entropy_bonus``.
        threshold: ``forking``'s τ_ρ over the global batch (None for other schemes).
        weight_scale: ``unit_mean``'s 1 / mean(w) over the global batch (1.0 without ``unit_mean``).
    """

    entropy: Optional[torch.Tensor] = None
    threshold: Optional[float] = None
    weight_scale: float = 1.0


_CURRENT: ContextVar[Optional[LossInputs]] = ContextVar("reweight_loss_inputs", default=None)


@contextmanager
def loss_inputs(inputs: LossInputs) -> Iterator[LossInputs]:
    """Make ``inputs`` what :func:`current` returns inside the ``with`` block."""
    token = _CURRENT.set(inputs)
    try:
        yield inputs
    finally:
        _CURRENT.reset(token)


def current() -> Optional[LossInputs]:
    """The extras set by :func:`loss_inputs` around this loss call, or None."""
    return _CURRENT.get()
