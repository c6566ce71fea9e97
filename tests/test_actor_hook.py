"""reweight.actor_hook: the patch to verl's TrainingWorker that feeds the entropy schemes and unit_mean."""

from __future__ import annotations

import functools

import pytest
import torch
from tensordict import NonTensorData, TensorDict
from test_loss import actor_config, loss_and_grad, make_batch
from verl.utils import tensordict_utils as tu
from verl.utils.metric import AggregationType, Metric

from reweight.loss import GLOBAL_SHARE_METRICS, ReweightPolicyLossConfig, compute_policy_loss_reweight, settings
from reweight.loss_inputs import LossInputs, loss_inputs
from reweight.weights import top_fraction_threshold


def nested(rows: list[torch.Tensor]) -> torch.Tensor:
    return torch.nested.nested_tensor(rows, layout=torch.jagged)


def minibatch(seed=50, batch=6, length=10):
    """A mini-batch as verl's update gets it: response-shaped fields as jagged nested tensors."""
    old, cur, adv, mask = make_batch(batch=batch, length=length, seed=seed)
    ent = torch.rand(old.shape, generator=torch.Generator().manual_seed(seed + 1)) * 3
    lens = mask.sum(1).tolist()
    fields = {k: nested([v[i, :n] for i, n in enumerate(lens)]) for k, v in
              (("old_log_probs", old), ("advantages", adv), ("entropy", ent), ("response_mask", mask.long()))}  # fmt: skip
    return TensorDict(fields, batch_size=[batch]), (old, cur, adv, mask, ent)


@pytest.mark.parametrize("unit_mean", [False, True])
def test_global_inputs_of_a_no_padding_minibatch(unit_mean):
    from reweight.actor_hook import global_inputs

    data, (old, _, adv, mask, ent) = minibatch()
    s = settings(actor_config(ReweightPolicyLossConfig(scheme="forking", alpha=0.25, unit_mean=unit_mean)))
    tau, scale, rank_mean = global_inputs(data, s)
    valid = sorted(ent[mask].tolist(), reverse=True)
    k = -(-len(valid) // 4)  # ⌈N/4⌉
    assert tau == pytest.approx(valid[k - 1])
    kept = int(((ent >= tau) & mask).sum())
    assert kept == k
    assert scale == (pytest.approx(len(valid) / kept) if unit_mean else 1.0)
    assert rank_mean == (pytest.approx(1.0) if unit_mean else None)  # one rank: its mean is the global mean
    low = settings(actor_config(ReweightPolicyLossConfig(scheme="low_prob", alpha=0.2, unit_mean=True)))
    assert global_inputs(data, low)[1] == pytest.approx(1 / (1 + 0.2 * (1 - old.exp()[mask])).mean().item(), rel=1e-6)
    with pytest.raises(RuntimeError, match="field 'entropy'"):
        global_inputs(data.exclude("entropy"), s)


def _ppo_data(old, adv, mask):
    """verl's update micro-batch in the padded form its ppo_loss accepts (prompts, responses, attention mask)."""
    b, r = mask.shape
    attention = torch.cat([torch.ones(b, 2, dtype=torch.long), mask.long()], dim=1)
    data = TensorDict(
        {"prompts": torch.ones(b, 2, dtype=torch.long), "responses": torch.ones(b, r, dtype=torch.long),
         "attention_mask": attention, "response_mask": mask.long(), "old_log_probs": old, "advantages": adv},
        batch_size=[b],
    )  # fmt: skip
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=int(mask.sum()), global_batch_size=b)
    return data


def _flat(x, mask):
    """A model output in verl's flat layout: per sequence, 1 prompt position then the response positions."""
    rows = []
    for i in range(mask.shape[0]):
        n = int(mask[i].sum())
        rows += [torch.zeros(1, dtype=x.dtype), x[i, :n], torch.zeros(1, dtype=x.dtype)]
    return torch.cat(rows)


@pytest.mark.parametrize("drop_entropy", [True, False])
def test_loss_with_inputs_passes_the_current_entropy_through_verls_ppo_loss(drop_entropy):
    """entropy_bonus through verl's own ppo_loss: the forward's entropy reaches our loss, detached."""
    from verl.workers.utils.losses import ppo_loss

    from reweight.actor_hook import GlobalInputs, loss_with_inputs

    old, cur, adv, mask = make_batch(batch=4, length=6, seed=52)
    ent = torch.rand(old.shape, generator=torch.Generator().manual_seed(53))
    cfg = actor_config(ReweightPolicyLossConfig(scheme="entropy_bonus", alpha=0.4))
    log_probs = _flat(cur.masked_fill(~mask, 0.0), mask).requires_grad_(True)
    entropy = _flat(ent.masked_fill(~mask, 0.0), mask).requires_grad_(True)  # verl's carries the graph
    inner = functools.partial(ppo_loss, config=cfg)
    loss, metrics = loss_with_inputs(
        {"log_probs": log_probs, "entropy": entropy}, _ppo_data(old, adv, mask), inner=inner,
        s=settings(cfg), inputs=GlobalInputs(None, 1.0), drop_entropy=drop_entropy,
    )  # fmt: skip
    with loss_inputs(LossInputs(ent.masked_fill(~mask, 0.0))):
        expected, _, direct = loss_and_grad(compute_policy_loss_reweight, old, cur.masked_fill(~mask, 0.0), adv, mask, cfg)
    assert torch.allclose(loss.detach(), expected, rtol=1e-6)
    loss.backward()
    assert entropy.grad is None or not entropy.grad.any()  # no gradient through the bonus
    assert ("actor/entropy_loss" in metrics) is not drop_entropy  # we turned entropy on: verl adds no 0·H term
    assert metrics["actor/reweight/bonus_mean"].values == [pytest.approx(direct["actor/reweight/bonus_mean"])]
    for key in GLOBAL_SHARE_METRICS:
        assert isinstance(metrics[key], Metric) and metrics[key].aggregation == AggregationType.SUM


def test_patch_is_applied_to_verls_worker_and_keeps_its_dispatch_attributes():
    import verl.workers.engine_workers as ew

    import reweight.plugin  # noqa: F401  (what verl's plugin entry point loads)

    train_batch = ew.TrainingWorker.train_batch
    assert train_batch.__reweight_patched__
    original = train_batch.__wrapped__
    assert set(vars(original)) <= set(vars(train_batch))  # verl's @register attributes, which Ray dispatch reads


def test_train_batch_sets_inputs_only_for_the_reweight_loss():
    """The patched train_batch, with verl's own code around a stub engine: entropy turned on for entropy_bonus
    only, the global τ_ρ reaches every micro-batch's loss, and the worker's loss binding is restored."""
    import verl.workers.engine_workers as ew

    import reweight.plugin  # noqa: F401

    seen = []

    class Engine:
        def train_mode(self, **_):
            from contextlib import nullcontext

            return nullcontext()

        def train_batch(self, data, loss_function):
            seen.append((tu.get_non_tensor_data(data, "calculate_entropy", False), loss_function))
            return {}

        def is_mp_src_rank_with_outputs(self):
            return False

    def make_worker(policy_loss):
        worker = object.__new__(ew.TrainingWorker)
        worker.engine = Engine()
        worker.engine_config = type("C", (), {"forward_only": False, "use_dynamic_bsz": False,
                                              "max_token_len_per_gpu": 1, "micro_batch_size_per_gpu": 1,
                                              "use_fused_kernels": False})()  # fmt: skip
        worker.model_config = {}
        worker.loss_fn = functools.partial(lambda **kw: kw, config=actor_config(policy_loss))
        return worker

    data, (_, _, _, mask, ent) = minibatch(seed=54)
    for policy_loss, entropy_on in [(ReweightPolicyLossConfig(scheme="entropy_bonus"), True),
                                    (ReweightPolicyLossConfig(scheme="forking", alpha=0.5), False),
                                    (ReweightPolicyLossConfig(scheme="low_prob"), False)]:  # fmt: skip
        worker = make_worker(policy_loss)
        bound = worker.loss_fn
        d = data.clone()
        tu.assign_non_tensor(d, global_token_num=NonTensorData([1]), calculate_entropy=False)
        ew.TrainingWorker.train_batch(worker, d)
        on, fn = seen[-1]
        assert on is entropy_on and worker.loss_fn is bound and fn.keywords["inner"] is bound
        if policy_loss.scheme == "forking":
            assert fn.keywords["inputs"].threshold == pytest.approx(top_fraction_threshold(ent[mask], 0.5).item())
