"""The one patch to verl's actor that the entropy schemes and ``unit_mean`` need (verl 0.9.1, version-checked).

verl calls a policy loss per micro-batch with the micro-batch's tensors only: no entropy, and nothing about
the rest of the global batch (the mini-batch over every data-parallel rank). The patch wraps
``verl.workers.engine_workers.TrainingWorker.train_batch``, which runs one mini-batch through the engine
with the worker's bound loss function (``self.loss_fn``, verl's ``ppo_loss`` bound to the actor config by
``engine_workers`` at import). When that config selects the ``reweight`` loss, for each mini-batch it

1. computes the global values once, before the engine's micro-batch loop, from the mini-batch's inputs
   (which every rank has before any forward pass), the way the engine all-reduces ``batch_num_tokens``:
   ``forking``'s τ_ρ, the k-th largest entropy over all ranks' valid tokens (one all-gather of the
   entropies), and ``unit_mean``'s Σw and token count (one all-reduce of two numbers);
2. turns verl's ``calculate_entropy`` on for this mini-batch when ``entropy_bonus`` needs the current
   policy's entropy (and only then: no other scheme pays for it);
3. binds, for this mini-batch only, a loss function that sets :class:`~reweight.loss_inputs.LossInputs`
   (entropy, τ_ρ, scale) around verl's own ``ppo_loss``, and logs the global-share metrics with verl's
   SUM aggregation; with ``unit_mean``, this rank's mean applied weight as ``weight_mean_rank_min`` /
   ``weight_mean_rank_max`` (verl's MIN / MAX over micro-batches and ranks): with one global scale the ranks'
   means straddle 1 while the global mean is 1, and a scale taken per rank would make both exactly 1.

Which entropy: ``forking`` uses the entropy verl's V1 trainer computes with ``old_log_prob`` (the actor's
log-prob pass over the whole batch, always run with ``calculate_entropy``, stored as field ``entropy``),
because a threshold over the global batch needs every token's entropy before the first micro-batch's
backward; that pass uses the parameters the update starts from, so it is the current policy's entropy for
the first mini-batch of a step (all of it with one mini-batch per step and ``ppo_epochs=1``, as in
``configs/embedded.yaml``). ``entropy_bonus`` needs no global value and uses the current policy's entropy
from the update's own forward pass, detached, as arXiv 2506.14758 does. ``unit_mean`` needs
``prob_source=old`` for the same reason as ``forking``.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
from types import ModuleType
from typing import Any, NamedTuple, Optional

import torch

from reweight.cpu.patches import Patch, _PostImportHook, _module_ready, _run, check_version
from reweight.loss import GLOBAL_SHARE_METRICS, LOSS_MODE, METRIC_PREFIX, Settings, local_weight_sum, settings
from reweight.loss_inputs import LossInputs, loss_inputs
from reweight.weights import top_fraction_threshold, unit_mean_scale

logger = logging.getLogger("reweight.actor_hook")

# The field verl 0.9.1's V1 trainer stores the log-prob pass's entropy in (trainer_base._compute_old_log_prob).
OLD_ENTROPY_FIELD = "entropy"
# unit_mean: the smallest and largest rank's mean applied weight (verl's MIN / MAX over micro-batches and ranks)
RANK_MEAN_METRICS = (METRIC_PREFIX + "weight_mean_rank_min", METRIC_PREFIX + "weight_mean_rank_max")


class GlobalInputs(NamedTuple):
    """What one mini-batch's loss needs from every data-parallel rank (see :func:`global_inputs`)."""

    threshold: Optional[float]  # forking's τ_ρ (None for other schemes)
    scale: float  # unit_mean's 1 / mean(w) over the global batch (1.0 without unit_mean)
    rank_weight_mean: Optional[float] = None  # unit_mean: this rank's mean of the scaled weights


def _our_settings(loss_fn: Any) -> Optional[tuple[Any, Settings]]:
    """(actor config, settings) when ``loss_fn`` is verl's ppo_loss bound to a config with the reweight loss."""
    config = getattr(loss_fn, "keywords", {}).get("config") if isinstance(loss_fn, functools.partial) else None
    policy_loss = None if config is None else getattr(config, "policy_loss", None)
    if policy_loss is None or policy_loss.get("loss_mode", None) != LOSS_MODE:
        return None
    return config, settings(config)


def _padded(data, *fields: str) -> dict[str, torch.Tensor]:
    """The response-shaped fields of a (no-padding) mini-batch as ``(batch, response_len)`` tensors."""
    padded = data.select("response_mask", *fields).to_padded_tensor()
    return {k: padded[k] for k in ("response_mask", *fields)}


def _dp_group(engine):
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    return engine.get_data_parallel_group()


def global_inputs(data, s: Settings, group=None) -> GlobalInputs:
    """τ_ρ and unit_mean's scale of one mini-batch over every data-parallel rank of ``group``.

    Args:
        data: this rank's mini-batch (verl's no-padding TensorDict with ``response_mask``,
            ``old_log_probs``, ``advantages`` and, for ``forking``, ``entropy``).
        s: the loss settings; group: the data-parallel process group (None: this process is the batch).
    """
    threshold = None
    entropy = None
    if s.scheme == "forking":
        if OLD_ENTROPY_FIELD not in data.keys():
            raise RuntimeError(
                f"scheme=forking needs the per-token entropy verl's V1 trainer stores as field "
                f"'{OLD_ENTROPY_FIELD}' with old_log_probs; this batch has only {sorted(data.keys())}"
            )
        t = _padded(data, OLD_ENTROPY_FIELD)
        entropy = t[OLD_ENTROPY_FIELD]
        local = entropy[t["response_mask"].bool()].float().cpu()
        if group is not None:
            parts: list[Any] = [None] * torch.distributed.get_world_size(group)
            torch.distributed.all_gather_object(parts, local, group=group)
            local = torch.cat(parts)
        threshold = top_fraction_threshold(local, s.alpha).item() if local.numel() else float("inf")
    if not s.unit_mean:
        return GlobalInputs(threshold, 1.0)
    t = _padded(data, "old_log_probs", "advantages")
    local = local_weight_sum(t["old_log_probs"], t["advantages"], t["response_mask"], s, entropy, threshold)
    sums = local.clone()
    if group is not None:
        from verl.utils.device import get_device_id

        sums = sums.to(get_device_id())
        torch.distributed.all_reduce(sums, op=torch.distributed.ReduceOp.SUM, group=group)
    scale = unit_mean_scale(*sums.tolist())
    w_sum, count = local.tolist()
    return GlobalInputs(threshold, scale, w_sum * scale / count if count else 1.0)


def loss_with_inputs(
    model_output, data, dp_group=None, *, inner, s: Settings, inputs: GlobalInputs, drop_entropy: bool
):  # fmt: skip
    """verl's bound loss (``inner``) for one micro-batch, with :class:`LossInputs` set around it."""
    from verl.utils.metric import AggregationType, Metric
    from verl.workers.utils.padding import no_padding_2_padding

    entropy = None
    if s.scheme == "forking":
        entropy = _padded(data, OLD_ENTROPY_FIELD)[OLD_ENTROPY_FIELD]
    elif s.scheme == "entropy_bonus":
        if model_output.get("entropy", None) is None:
            raise RuntimeError("scheme=entropy_bonus: verl's forward returned no entropy (calculate_entropy is off)")
        entropy = no_padding_2_padding(model_output["entropy"], data).detach()
        if drop_entropy:  # we turned calculate_entropy on: keep verl from adding a 0 · entropy term to backprop
            model_output = {k: v for k, v in model_output.items() if k != "entropy"}
    with loss_inputs(LossInputs(entropy, inputs.threshold, inputs.scale)):
        loss, metrics = inner(model_output=model_output, data=data, dp_group=dp_group)
    for key in GLOBAL_SHARE_METRICS:  # shares of a global total: summed over micro-batches (see reweight.loss)
        if isinstance(metrics.get(key), Metric):
            summed = Metric(aggregation=AggregationType.SUM)
            summed.extend(metrics[key].values)
            metrics[key] = summed
    if inputs.rank_weight_mean is not None:
        for key, how in zip(RANK_MEAN_METRICS, (AggregationType.MIN, AggregationType.MAX)):
            metrics[key] = Metric(aggregation=how, value=inputs.rank_weight_mean)
    return loss, metrics


def _apply(mod: ModuleType) -> None:
    cls = mod.TrainingWorker
    original = cls.train_batch
    if getattr(original, "__reweight_patched__", False):
        return

    @functools.wraps(original)  # keeps verl's @register dispatch attributes
    def train_batch(self, data):
        ours = _our_settings(self.loss_fn)
        if ours is None:
            return original(self, data)
        config, s = ours
        from verl.utils import tensordict_utils as tu

        inputs = global_inputs(data, s, _dp_group(self.engine)) if s.needs_inputs else GlobalInputs(None, 1.0)
        drop_entropy = False
        if s.scheme == "entropy_bonus" and not tu.get_non_tensor_data(data, key="calculate_entropy", default=False):
            tu.assign_non_tensor(data, calculate_entropy=True)
            drop_entropy = config.entropy_coeff == 0
        inner = self.loss_fn
        self.loss_fn = functools.partial(
            loss_with_inputs, inner=inner, s=s, inputs=inputs, drop_entropy=drop_entropy
        )
        try:
            return original(self, data)
        finally:
            self.loss_fn = inner

    train_batch.__reweight_patched__ = True
    cls.train_batch = train_batch


PATCH = Patch(
    "actor_loss_inputs",
    "verl.workers.engine_workers",
    ("TrainingWorker", "ppo_loss"),
    _apply,
    "TrainingWorker.train_batch: global τ_ρ / unit_mean scale per mini-batch, entropy into the reweight loss",
)

_lock = threading.Lock()
_installed = False


def install() -> None:
    """Check the verl version and apply :data:`PATCH` now or when ``verl.workers.engine_workers`` is imported."""
    global _installed
    check_version()
    with _lock:
        if _installed:
            return
        sys.meta_path.insert(0, _PostImportHook({PATCH.module: [PATCH]}))
        _installed = True
        module = sys.modules.get(PATCH.module)
        if module is not None and getattr(module, "__spec__", None) is not None and _module_ready(module):
            _run(PATCH, module)
