"""The ``reweight`` policy loss for verl 0.9.1: DAPO's clipped surrogate with reweighted advantages.

    Ã_t = w(p_t) · Â_t                                   (w from :mod:`reweight.weights`)
    L   = verl ``vanilla`` loss evaluated at Ã instead of Â

``vanilla`` is verl's clipped surrogate with clip-higher (``clip_ratio_low`` / ``clip_ratio_high``),
dual clip (``clip_ratio_c``) for Ã < 0, the ratio exp(clamp(log π − log π_old, ±20)), optional
``rollout_is_weights``, and aggregation over the *global* batch (``config.global_batch_info``), so
the loss is invariant to data-parallel size and micro-batching. Because w > 0 (or w >= 0) never flips
the sign of Â, the clipping regions are the same as DAPO's; with w ≡ 1 (scheme ``none``, or α = 0
for ``low_prob`` / ``dominate`` / ``focal``) the loss *is* verl's ``vanilla`` loss, bit for bit.

Otherwise :func:`reweighted_surrogate` computes it: the weighting followed by verl's ``vanilla``
operations in verl's order (so, eagerly, loss and gradient equal verl's at Ã bit for bit), with the
metrics gathered in a few reductions and one host sync instead of verl's three. Under verl's
``actor.use_torch_compile`` (its default) that function runs compiled, forward and backward, which
makes the reweighted loss cheaper than verl's eager ``vanilla``.

Select it with Hydra overrides (the ``configs/dapo_reweight.yaml`` preset does this)::

    actor_rollout_ref.actor.policy_loss._target_=reweight.loss.ReweightPolicyLossConfig
    actor_rollout_ref.actor.policy_loss.loss_mode=reweight
    actor_rollout_ref.actor.policy_loss.scheme=low_prob
    actor_rollout_ref.actor.policy_loss.alpha=0.2
    actor_rollout_ref.actor.policy_loss.apply_to=all
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from verl.trainer.ppo.core_algos import agg_loss, compute_policy_loss_vanilla, register_policy_loss
from verl.workers.config import PolicyLossConfig

from reweight.configs import POLICY_LOSS_KEY
from reweight.loss_inputs import LossInputs, current
from reweight.weights import (
    APPLY_TO,
    DEFAULT_ALPHA,
    DEFAULT_KAPPA,
    ENTROPY_SCHEMES,
    PROB_SOURCES,
    SCHEMES,
    entropy_bonus,
    forking_weights,
    sampled_token_prob,
    select_by_sign,
    token_weights,
    validate,
)

LOSS_MODE = "reweight"
CONFIG_TARGET = "reweight.loss.ReweightPolicyLossConfig"
METRIC_PREFIX = "actor/reweight/"

# Tokens with p below this count as "low-probability" in the metrics (w > 1 + α/2 for ``low_prob``).
LOW_PROB_THRESHOLD = 0.5


@dataclass
class ReweightPolicyLossConfig(PolicyLossConfig):
    """verl's ``PolicyLossConfig`` plus the token-weighting settings of arXiv 2603.22117.

    Args:
        loss_mode (str): must be ``"reweight"`` (the loss registered by this module).
        scheme (str): token weight, one of ``none``, ``low_prob``, ``dominate``, ``focal``,
            ``middle``, ``normalize`` (formulas and sources in :mod:`reweight.weights`). Default
            ``low_prob``, the paper's w = 1 + α(1 − p).
        alpha (float): the scheme's strength α >= 0 (> 0 for ``normalize``, <= 1 for ``dominate``).
            Default 0.2, the paper's value for Qwen2.5-Math-7B (0.1 for Qwen3-8B-Base). α = 0
            reproduces DAPO exactly for ``low_prob``, ``dominate`` and ``focal``.
        prob_source (str): where p comes from: ``old`` (π_θold of the rollout, verl's
            ``old_log_prob``; the paper's, default) or ``current`` (detached π_θ).
        apply_to (str): which tokens the weight applies to: ``all`` (default, the paper's),
            ``positive`` (advantage > 0) or ``negative`` (advantage < 0); the others keep w = 1.
            The sign selection asks which samples gain from the weight (arXiv 2603.22117's question;
            see also Zhu et al., arXiv 2506.01347, on positive vs negative samples).
            ``entropy_bonus`` needs ``all``.
        unit_mean (bool): rescale the weights to mean 1 over the valid response tokens of the global batch
            (the mini-batch, over all data-parallel ranks and micro-batches), whatever the scheme: the loss
            then redistributes the update among tokens without changing its average size (verl issue #7580
            proposes this for per-sample weights). Default false (the paper's). Needs ``prob_source=old``.
        kappa (float): ``entropy_bonus``'s κ > 1: the bonus min(α·H, |Â|/κ) is at most |Â|/κ, so a negative
            advantage stays negative. Default 2, the value of Cheng et al., arXiv 2506.14758 (whose α is 0.4;
            this class's shared ``alpha`` default stays 0.2, so set ``alpha=0.4`` for their setting).

    ``scheme=forking`` reads ``alpha`` as the kept fraction ρ in (0, 1]: the shared default 0.2 is also the
    ρ = 20% of Wang et al., arXiv 2506.01939. The entropy schemes and ``unit_mean`` need global batch values
    that verl does not pass to a policy loss; :mod:`reweight.actor_hook` provides them in training.
    """

    loss_mode: str = LOSS_MODE
    scheme: str = "low_prob"
    alpha: float = DEFAULT_ALPHA
    prob_source: str = "old"
    apply_to: str = "all"
    unit_mean: bool = False
    kappa: float = DEFAULT_KAPPA

    def __post_init__(self):
        if self.loss_mode != LOSS_MODE:
            raise ValueError(
                f"{POLICY_LOSS_KEY}.loss_mode={self.loss_mode!r} but _target_ is {CONFIG_TARGET}, whose settings "
                f"only the '{LOSS_MODE}' loss reads; set {POLICY_LOSS_KEY}.loss_mode={LOSS_MODE}"
            )
        # OmegaConf hands integers through for float fields written as `alpha=1`.
        for key in ("alpha", "kappa"):
            value = getattr(self, key)
            if isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, key, float(value))
        validate(
            self.scheme, self.alpha, self.prob_source, apply_to=self.apply_to, prefix=f"{POLICY_LOSS_KEY}.",
            kappa=self.kappa, unit_mean=self.unit_mean,
        )  # fmt: skip


@dataclass(frozen=True)
class Settings:
    """The ``reweight`` settings of one actor config (see :class:`ReweightPolicyLossConfig`)."""

    scheme: str
    alpha: float
    prob_source: str
    apply_to: str = "all"
    unit_mean: bool = False
    kappa: float = DEFAULT_KAPPA

    @property
    def needs_inputs(self) -> bool:
        """True when the loss needs :class:`~reweight.loss_inputs.LossInputs` (entropy or a global statistic)."""
        return self.scheme in ENTROPY_SCHEMES or self.unit_mean


def settings(config: Any) -> Settings:
    """The full settings from the actor config, or a clear error if ours is not in use."""
    scheme, alpha, prob_source, apply_to = _settings(config)
    policy_loss = config.get("policy_loss")
    unit_mean, kappa = policy_loss.get("unit_mean", None), policy_loss.get("kappa", None)
    unit_mean = False if unit_mean is None else unit_mean
    kappa = DEFAULT_KAPPA if kappa is None else float(kappa)
    if not isinstance(policy_loss, ReweightPolicyLossConfig):
        validate(scheme, alpha, prob_source, apply_to=apply_to, prefix=f"{POLICY_LOSS_KEY}.", kappa=kappa, unit_mean=unit_mean)
    return Settings(scheme, alpha, prob_source, apply_to, unit_mean, kappa)


def _settings(config: Any) -> tuple[str, float, str, str]:
    """(scheme, alpha, prob_source, apply_to) from the actor config, or a clear error if ours is not in use."""
    policy_loss = None if config is None else config.get("policy_loss", None)
    # verl's BaseConfig raises AttributeError (not KeyError) for `in`, so probe with .get
    if policy_loss is None or any(policy_loss.get(k, None) is None for k in ("scheme", "alpha", "prob_source")):
        raise ValueError(
            f"loss_mode '{LOSS_MODE}' needs its settings: set {POLICY_LOSS_KEY}._target_={CONFIG_TARGET} "
            f"(verl's own PolicyLossConfig has no scheme/alpha/prob_source fields); "
            f"got {type(policy_loss).__name__}"
        )
    scheme, alpha, prob_source = policy_loss["scheme"], float(policy_loss["alpha"]), policy_loss["prob_source"]
    apply_to = policy_loss.get("apply_to", None)
    if apply_to is None:  # a plain dict written before apply_to existed: the weight applies to every token
        apply_to = "all"
    if not isinstance(policy_loss, ReweightPolicyLossConfig):  # a plain dict / DictConfig: not validated yet
        validate(scheme, alpha, prob_source, apply_to=apply_to, prefix=f"{POLICY_LOSS_KEY}.")
    return scheme, alpha, prob_source, apply_to


@torch.no_grad()
def applied_weights(
    prob: torch.Tensor,
    advantages: torch.Tensor,
    scheme: str,
    alpha: float,
    apply_to: str,
    inputs: Optional[LossInputs] = None,
) -> torch.Tensor:
    """The weight each token's advantage is multiplied by: the scheme's w (from p, or from the entropy for
    ``forking``; 1 for ``entropy_bonus``), sign-selected by ``apply_to``, times ``unit_mean``'s global scale.

    Args: ``prob`` and ``advantages`` ``(batch, response_len)``; the settings; ``inputs`` the entropy,
    threshold and scale of :class:`~reweight.loss_inputs.LossInputs` (needed by the entropy schemes).

    Returns:
        ``(batch, response_len)`` weights, dtype of ``prob``, detached.
    """
    if scheme == "forking":
        weights = forking_weights(inputs.entropy, inputs.threshold).to(prob.dtype)
    elif scheme == "entropy_bonus":
        weights = torch.ones_like(prob)
    else:
        weights = token_weights(prob, scheme, alpha)
    weights = select_by_sign(weights, advantages, apply_to)
    scale = 1.0 if inputs is None else inputs.weight_scale
    if not isinstance(scale, torch.Tensor) and scale == 1.0:
        return weights
    return weights * scale


@torch.no_grad()
def local_weight_sum(
    old_log_prob: torch.Tensor, advantages: torch.Tensor, response_mask: torch.Tensor, s: "Settings",
    entropy: Optional[torch.Tensor] = None, threshold: Optional[float] = None,
) -> torch.Tensor:  # fmt: skip
    """(Σw, count) over this shard's response tokens before ``unit_mean``'s scale, float64 ``(2,)``: summed over
    data-parallel ranks they give the global mean of w (``prob_source=old``: p from ``old_log_prob``)."""
    prob = sampled_token_prob(old_log_prob, old_log_prob, "old")
    weights = applied_weights(prob, advantages, s.scheme, s.alpha, s.apply_to, LossInputs(entropy, threshold))
    mask = response_mask.bool()
    return torch.stack([torch.where(mask, weights.double(), 0.0).sum(), mask.sum().double()])


@torch.no_grad()
def shaped_advantages(
    advantages: torch.Tensor, weights: torch.Tensor, scheme: str, alpha: float, kappa: float, entropy=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Ã, ψ): Ã = w·Â, plus ψ = min(α·H, |Â|/κ) for ``entropy_bonus`` (ψ = 0 otherwise), dtype of ``advantages``."""
    weighted = advantages * weights.to(advantages.dtype)
    if scheme != "entropy_bonus":
        return weighted, torch.zeros((), dtype=advantages.dtype, device=advantages.device)
    bonus = entropy_bonus(advantages, entropy, alpha, kappa)
    return weighted + bonus, bonus


@torch.no_grad()
def reweight_advantages(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    scheme: str,
    alpha: float,
    prob_source: str,
    apply_to: str = "all",
    inputs: Optional[LossInputs] = None,
    kappa: float = DEFAULT_KAPPA,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ã = w(p)·Â (+ ψ for ``entropy_bonus``) and the statistics behind the metrics, with no host sync.

    Args: ``(batch, response_len)`` tensors as for the loss; the scheme settings; ``inputs`` for the entropy
    schemes and ``unit_mean``. With ``apply_to`` ``positive`` / ``negative`` only tokens with Â > 0 / Â < 0
    are weighted (the others keep w = 1), and the statistics describe the weights actually applied.

    Returns:
        ``(weighted_advantages, stats)``: Ã in the dtype of ``advantages``, ``(batch, response_len)``,
        and the float32 ``(8,)`` statistics of :func:`weight_stats`.
    """
    mask = response_mask.bool()
    prob = sampled_token_prob(old_log_prob, log_prob, prob_source)
    weights = applied_weights(prob, advantages, scheme, alpha, apply_to, inputs)
    shaped, bonus = shaped_advantages(advantages, weights, scheme, alpha, kappa, None if inputs is None else inputs.entropy)
    return shaped, weight_stats(mask, mask.reshape(-1).float(), prob, weights, bonus)


def weight_stats(
    mask: torch.Tensor, flat_mask: torch.Tensor, prob: torch.Tensor, weights: torch.Tensor, bonus: torch.Tensor
) -> torch.Tensor:
    """count, Σp, Σw, min w, max w, #(p < 0.5), #(w > 0), Σψ over response tokens, as a float32 ``(8,)``.

    Args: ``mask`` bool and ``prob`` / ``weights`` ``(batch, response_len)``; ``flat_mask`` the mask
    flattened as float, ``(batch · response_len,)``; ``bonus`` ψ of ``entropy_bonus``, same shape, or a
    0-d zero. Masked sums are dot products with ``flat_mask`` and counts are ``count_nonzero``: no
    ``(batch, response_len)`` float temporaries beyond ``w`` (min / max are ±float32-max when there is no
    response token). No host sync.
    """
    p, w = prob.float(), weights.float()
    inf = torch.finfo(torch.float32).max
    bonus_sum = torch.dot(bonus.float().reshape(-1), flat_mask) if bonus.dim() else torch.zeros((), device=p.device)
    return torch.stack(
        [
            torch.count_nonzero(mask).float(),
            torch.dot(p.reshape(-1), flat_mask),
            torch.dot(w.reshape(-1), flat_mask),
            torch.where(mask, w, inf).amin(),
            torch.where(mask, w, -inf).amax(),
            torch.count_nonzero((p < LOW_PROB_THRESHOLD) & mask).float(),
            torch.count_nonzero((w > 0) & mask).float(),
            bonus_sum,
        ]
    )


_COMPILED: dict[Any, Any] = {}


def _compiled(fn):
    """``fn`` under ``torch.compile`` (dynamic shapes; forward and backward), built lazily once per process."""
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=True)
    return _COMPILED[fn]


def weights_are_one(scheme: str, alpha: float) -> bool:
    """True when the scheme gives w ≡ 1 and leaves Â as is (``none``; α = 0 for ``low_prob``, ``dominate``,
    ``focal``). ``entropy_bonus`` has w ≡ 1 but changes Â, so it is not."""
    return scheme == "none" or (alpha == 0 and scheme in ("low_prob", "dominate", "focal"))


def clip_settings(config: Any) -> tuple[float, float, float]:
    """(ε_low, ε_high, c) read from the actor config exactly as verl's ``vanilla`` loss reads them."""
    clip_ratio = config.clip_ratio
    low = config.clip_ratio_low if config.clip_ratio_low is not None else clip_ratio
    high = config.clip_ratio_high if config.clip_ratio_high is not None else clip_ratio
    clip_c = config.get("clip_ratio_c", 3.0)
    if not clip_c > 1.0:
        raise ValueError(f"actor_rollout_ref.actor.clip_ratio_c must be > 1.0 for dual-clip PPO, got {clip_c}")
    return low, high, clip_c


def _masked_metrics(mask, negative_approx_kl, clipped, clipped_lower, prob, weights, bonus) -> torch.Tensor:
    """verl's three surrogate metrics, then :func:`weight_stats`, over response tokens: a float32 ``(11,)``.

    Args:
        mask: bool ``(batch, response_len)``; negative_approx_kl: clamped log π − log π_old;
        clipped, clipped_lower: bool, where verl's pg_clipfrac / pg_clipfrac_lower count a token;
        prob, weights: p and w of each token; bonus: ψ or a 0-d zero. All ``(batch, response_len)``.
    """
    flat = mask.reshape(-1).float()
    stats = weight_stats(mask, flat, prob, weights, bonus)
    denom = stats[0] + 1e-8  # verl's masked_mean
    surrogate = torch.stack(
        [
            torch.count_nonzero(clipped & mask).float() / denom,
            -torch.dot(negative_approx_kl.reshape(-1).float(), flat) / denom,
            torch.count_nonzero(clipped_lower & mask).float() / denom,
        ]
    )
    return torch.cat([surrogate, stats])


def reweighted_surrogate(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    rollout_is_weights: Optional[torch.Tensor],
    scheme: str,
    alpha: float,
    prob_source: str,
    apply_to: str,
    clip: tuple[float, float, float],
    loss_agg_mode: str,
    global_batch_info: dict[str, Any],
    entropy: Optional[torch.Tensor] = None,
    threshold: Optional[float] = None,
    weight_scale: float = 1.0,
    kappa: float = DEFAULT_KAPPA,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ã = w·Â (+ ψ) and verl's ``vanilla`` clipped surrogate at Ã, with every metric in one tensor (no host sync).

    The loss is computed by the same operations, in the same order, as verl 0.9.1's
    ``compute_policy_loss_vanilla`` (ratio from the clamped log-ratio, clip-higher, dual clip for Ã < 0,
    optional rollout IS weights, verl's own ``agg_loss``), so loss and gradient are verl's bit for bit when
    run eagerly; only the metrics are gathered differently: all masked sums in one reduction instead of a
    dozen, and no host sync. Under ``torch.compile`` the weighting, the surrogate, the metrics and the
    backward fuse into a few kernels.

    Args: ``(batch, response_len)`` tensors as for the loss; the scheme settings; ``clip`` from
    :func:`clip_settings`; verl's aggregation mode and ``global_batch_info``; for the entropy schemes and
    ``unit_mean`` the fields of :class:`~reweight.loss_inputs.LossInputs` (``entropy``
    ``(batch, response_len)``, ``threshold``, ``weight_scale``) and ``kappa``.

    Returns:
        ``(loss, values)``: the scalar loss and a float32 ``(11,)`` tensor: verl's pg_clipfrac, ppo_kl and
        pg_clipfrac_lower, then the statistics of :func:`weight_stats`.
    """
    clip_low, clip_high, clip_c = clip
    mask = response_mask.bool()
    with torch.no_grad():
        prob = sampled_token_prob(old_log_prob, log_prob, prob_source)
        inputs = LossInputs(entropy, threshold, weight_scale)
        weights = applied_weights(prob, advantages, scheme, alpha, apply_to, inputs)
        shaped, bonus = shaped_advantages(advantages, weights, scheme, alpha, kappa, entropy)
        neg_advantages = -shaped  # −Ã
        negative = neg_advantages > 0  # Ã < 0
    negative_approx_kl = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(negative_approx_kl)
    pg_losses1 = neg_advantages * ratio
    pg_losses2 = neg_advantages * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    clip_pg_losses1 = torch.maximum(pg_losses1, pg_losses2)
    pg_losses3 = neg_advantages * clip_c
    clip_pg_losses2 = torch.min(pg_losses3, clip_pg_losses1)
    pg_losses = torch.where(negative, clip_pg_losses2, clip_pg_losses1)
    if rollout_is_weights is not None:
        pg_losses = pg_losses * rollout_is_weights
    loss = agg_loss(loss_mat=pg_losses, loss_mask=response_mask, loss_agg_mode=loss_agg_mode, **global_batch_info)
    with torch.no_grad():
        values = _masked_metrics(
            mask, negative_approx_kl, pg_losses2 > pg_losses1, (clip_pg_losses1 > pg_losses3) & negative, prob, weights,
            bonus,
        )  # fmt: skip
    return loss, values


# Metrics that are shares of a global-batch total: each micro-batch reports its part × dp_size / N_global, and
# the actor hook logs them with verl's SUM aggregation (summed over micro-batches, averaged over ranks), so
# the logged value is the mean over the global batch's valid tokens.
GLOBAL_SHARE_METRICS = (METRIC_PREFIX + "weight_mean_global", METRIC_PREFIX + "kept_frac_global")


def weight_metrics(stats: torch.Tensor | list[float], global_batch_info: Optional[dict] = None) -> dict[str, float]:
    """The ``actor/reweight/...`` metrics from :func:`weight_stats`' statistics (one host sync; none when
    given as a list already).

    ``weight_mean``, ``weight_min``, ``weight_max``, ``prob_mean`` (mean p of sampled tokens),
    ``low_prob_frac`` (fraction of sampled tokens with p < 0.5), ``kept_frac`` (fraction with w > 0) and
    ``bonus_mean`` (mean ψ of ``entropy_bonus``, 0 otherwise), over the micro-batch's response tokens (verl
    averages them over micro-batches); and :data:`GLOBAL_SHARE_METRICS`, this micro-batch's share of the
    global batch's Σw and #(w > 0), from verl's ``global_batch_info`` (``batch_num_tokens``, ``dp_size``;
    the micro-batch's own count when absent). A micro-batch with no response token reports weight 1, p 1
    and fractions 0, so every micro-batch has the same keys.
    """
    count, p_sum, w_sum, w_min, w_max, n_low, n_kept, bonus_sum = (
        stats.tolist() if isinstance(stats, torch.Tensor) else stats
    )
    info = global_batch_info or {}
    global_count = info.get("batch_num_tokens") or count
    dp_size = info.get("dp_size") or 1
    if count == 0:
        w_mean = w_min = w_max = p_mean = 1.0
        low_frac = kept_frac = bonus_mean = 0.0
    else:
        w_mean, p_mean, low_frac = w_sum / count, p_sum / count, n_low / count
        kept_frac, bonus_mean = n_kept / count, bonus_sum / count
    share = dp_size / global_count if global_count else 0.0
    return {
        METRIC_PREFIX + "weight_mean": w_mean,
        METRIC_PREFIX + "weight_min": w_min,
        METRIC_PREFIX + "weight_max": w_max,
        METRIC_PREFIX + "prob_mean": p_mean,
        METRIC_PREFIX + "low_prob_frac": low_frac,
        METRIC_PREFIX + "kept_frac": kept_frac,
        METRIC_PREFIX + "bonus_mean": bonus_mean,
        GLOBAL_SHARE_METRICS[0]: w_sum * share,
        GLOBAL_SHARE_METRICS[1]: n_kept * share,
    }


def _inputs(s: Settings) -> LossInputs:
    """The :class:`LossInputs` this loss call needs, or a clear error when the actor hook did not set them."""
    inputs = current()
    if not s.needs_inputs:
        return LossInputs()
    missing = []
    if inputs is None:
        missing = ["all of them"]
    else:
        if s.scheme in ENTROPY_SCHEMES and inputs.entropy is None:
            missing.append("entropy")
        if s.scheme == "forking" and inputs.threshold is None:
            missing.append("threshold")
    if missing:
        what = f"scheme={s.scheme}" if s.scheme in ENTROPY_SCHEMES else "unit_mean=true"
        raise ValueError(
            f"{POLICY_LOSS_KEY}.{what} needs values verl does not pass to a policy loss ({', '.join(missing)} "
            f"missing): reweight.actor_hook provides them in training (is the reweight verl plugin loaded?); "
            f"elsewhere call the loss inside reweight.loss_inputs.loss_inputs(...)"
        )
    return inputs


@register_policy_loss(LOSS_MODE)  # type: ignore[arg-type]
def compute_policy_loss_reweight(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Optional[Any] = None,
    rollout_is_weights: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """DAPO's clipped surrogate with token-reweighted advantages (arXiv 2603.22117, Eq. 8).

    Args:
        old_log_prob: log π_θold of the sampled tokens, ``(batch, response_len)``.
        log_prob: log π_θ of the sampled tokens (carries the gradient), ``(batch, response_len)``.
        advantages: Â, e.g. GRPO group-normalised, ``(batch, response_len)``.
        response_mask: 1/True on response tokens, ``(batch, response_len)``.
        loss_agg_mode: verl's aggregation (``token-mean`` for DAPO).
        config: verl ``ActorConfig`` whose ``policy_loss`` is a :class:`ReweightPolicyLossConfig`.
            With ``config.use_torch_compile`` (verl's default, also used for its own log-prob kernels)
            the weighting and the surrogate run as one compiled function, forward and backward;
            otherwise eagerly. Both compute the same values (to float rounding).
        rollout_is_weights: optional rollout-correction weights, ``(batch, response_len)``.

    The entropy schemes and ``unit_mean`` also read :func:`reweight.loss_inputs.current` (set by
    :mod:`reweight.actor_hook` in training).

    Returns:
        ``(loss, metrics)``: the scalar loss, verl's ``vanilla`` metrics (``actor/pg_clipfrac``,
        ``actor/ppo_kl``, ``actor/pg_clipfrac_lower``) and ours (``actor/reweight/...``).
    """
    s = settings(config)
    inputs = _inputs(s)
    compiled = config.get("use_torch_compile", False)
    info = dict(config.global_batch_info)
    if not weights_are_one(s.scheme, s.alpha) or inputs.weight_scale != 1.0:
        threshold, scale = inputs.threshold, inputs.weight_scale
        if compiled:  # tensors, not Python floats, so that a new value each step does not recompile
            threshold = None if threshold is None else torch.tensor(threshold, device=log_prob.device)
            scale = scale if scale == 1.0 else torch.tensor(scale, device=log_prob.device)
        surrogate = _compiled(reweighted_surrogate) if compiled else reweighted_surrogate
        loss, values = surrogate(
            old_log_prob, log_prob, advantages, response_mask, rollout_is_weights, s.scheme, s.alpha, s.prob_source,
            s.apply_to, clip_settings(config), loss_agg_mode, info, inputs.entropy, threshold, scale, s.kappa,
        )  # fmt: skip
        values = values.tolist()  # the one host sync, for every metric
        metrics = dict(zip(("actor/pg_clipfrac", "actor/ppo_kl", "actor/pg_clipfrac_lower"), values[:3]))
        metrics.update(weight_metrics(values[3:], info))
        return loss, metrics
    # w ≡ 1: verl's own vanilla loss, untouched; only the probability statistics are ours.
    weigh = _compiled(reweight_advantages) if compiled else reweight_advantages
    weighted_advantages, stats = weigh(
        old_log_prob, log_prob, advantages, response_mask, s.scheme, s.alpha, s.prob_source, s.apply_to
    )
    loss, metrics = compute_policy_loss_vanilla(
        old_log_prob=old_log_prob,
        log_prob=log_prob,
        advantages=weighted_advantages,
        response_mask=response_mask,
        loss_agg_mode=loss_agg_mode,
        config=config,
        rollout_is_weights=rollout_is_weights,
    )
    metrics.update(weight_metrics(stats, info))
    return loss, metrics

__all__ = [
    "APPLY_TO",
    "CONFIG_TARGET",
    "DEFAULT_ALPHA",
    "LOSS_MODE",
    "PROB_SOURCES",
    "ReweightPolicyLossConfig",
    "SCHEMES",
    "compute_policy_loss_reweight",
    "reweight_advantages",
    "reweighted_surrogate",
    "settings",
    "local_weight_sum",
    "weight_metrics",
    "weight_stats",
    "weights_are_one",
]
