"""``forking``, ``entropy_bonus`` and ``unit_mean`` against float64 closed forms, verl's vanilla loss, and
invariance to data-parallel size and micro-batching (their global values computed once per mini-batch)."""

from __future__ import annotations

import math

import pytest
import torch
from test_loss import CLIP_C, EPS_HIGH, EPS_LOW, actor_config, loss_and_grad, make_batch
from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla
from verl.workers.config import PolicyLossConfig

from reweight.loss import GLOBAL_SHARE_METRICS, ReweightPolicyLossConfig, compute_policy_loss_reweight, local_weight_sum
from reweight.loss import settings as loss_settings
from reweight.loss_inputs import LossInputs, loss_inputs
from reweight.weights import entropy_bonus, top_fraction_threshold

KEY = "actor_rollout_ref.actor.policy_loss"


def make_entropy(shape, seed=0) -> torch.Tensor:
    """Distinct entropies in (0, 3) (no ties), float64."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64) * 3


def reference(old, cur, a, mask):
    """Token-mean of verl's dual-clipped surrogate at the advantage ``a``, written out in float64."""
    ratio = torch.exp(torch.clamp(cur - old, -20, 20))
    per_token = -torch.minimum(ratio * a, torch.clamp(ratio, 1 - EPS_LOW, 1 + EPS_HIGH) * a)
    per_token = torch.where(a < 0, torch.minimum(per_token, -CLIP_C * a), per_token)
    m = mask.double()
    return (per_token * m).sum() / m.sum()


def kth_largest(values: list[float], k: int) -> float:
    return sorted(values, reverse=True)[k - 1]


def run(policy_loss, old, cur, adv, mask, inputs=None, agg="token-mean", **info):
    cfg = actor_config(policy_loss, agg, **info)
    if inputs is None:
        return loss_and_grad(compute_policy_loss_reweight, old, cur, adv, mask, cfg)
    with loss_inputs(inputs):
        return loss_and_grad(compute_policy_loss_reweight, old, cur, adv, mask, cfg)


def test_top_fraction_threshold_on_a_hand_made_batch():
    """N = 5 valid tokens, ρ = 0.4: k = 2 kept, τ = the 2nd largest entropy; ρ = 0.2 keeps 1, ρ = 1 keeps all."""
    h = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.3], dtype=torch.float64)
    assert top_fraction_threshold(h, 0.4).item() == 0.7
    assert top_fraction_threshold(h, 0.2).item() == 0.9
    assert top_fraction_threshold(h, 1.0).item() == 0.1
    assert top_fraction_threshold(h, 0.5).item() == 0.5  # ⌈2.5⌉ = 3 kept
    h10 = torch.arange(10, dtype=torch.float64)
    assert int((h10 >= top_fraction_threshold(h10, 0.2)).sum()) == 2  # 0.2·10 is 2.0000000000000004 in floats


def test_forking_matches_float64_reference_on_a_hand_made_batch():
    """Rows: entropies [0.1, 0.9, 0.5] and [0.7, 0.3, (pad)]; ρ = 0.4 keeps the 0.9 and 0.7 tokens only."""
    old = torch.tensor([[-0.5, -1.0, -2.0], [-0.3, -0.1, -0.7]], dtype=torch.float64)
    cur = old + torch.tensor([[0.1, -0.2, 0.05], [0.3, -0.1, 0.0]], dtype=torch.float64)
    adv = torch.tensor([[1.5], [-0.8]], dtype=torch.float64).expand(2, 3).clone()
    mask = torch.tensor([[True, True, True], [True, True, False]])
    ent = torch.tensor([[0.1, 0.9, 0.5], [0.7, 0.3, 5.0]], dtype=torch.float64)  # the padded 5.0 must not count
    tau = top_fraction_threshold(ent[mask], 0.4).item()
    assert tau == 0.7
    w = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    loss, grad, metrics = run(ReweightPolicyLossConfig(scheme="forking", alpha=0.4), old, cur, adv, mask, LossInputs(ent, tau))
    x = cur.clone().requires_grad_(True)
    ref = reference(old, x, w * adv, mask)
    ref.backward()
    assert torch.allclose(loss, ref, rtol=1e-12) and torch.allclose(grad, x.grad, rtol=1e-12, atol=1e-15)
    assert (grad[w == 0] == 0).all() and (grad[w == 1] != 0).all()  # only the kept tokens move
    assert metrics["actor/reweight/kept_frac"] == pytest.approx(0.4)
    assert metrics["actor/reweight/weight_mean"] == pytest.approx(0.4)


@pytest.mark.parametrize("rho", [0.2, 0.5])
def test_forking_keeps_the_top_fraction_of_a_random_batch(rho):
    old, cur, adv, mask = make_batch(batch=8, length=13, dtype=torch.float64, seed=31)
    ent = make_entropy(old.shape, seed=32)
    valid = ent[mask].tolist()
    k = math.ceil(rho * len(valid))
    tau = kth_largest(valid, k)  # the reference: sort and take the k-th largest
    assert top_fraction_threshold(ent[mask], rho).item() == tau
    w = ((ent >= tau) & mask).double()
    assert int(w.sum()) == k
    loss, grad, metrics = run(ReweightPolicyLossConfig(scheme="forking", alpha=rho), old, cur, adv, mask, LossInputs(ent, tau))
    vanilla, vgrad, _ = loss_and_grad(compute_policy_loss_vanilla, old, cur, adv * w, mask, actor_config(PolicyLossConfig()))
    x = cur.clone().requires_grad_(True)
    ref = reference(old, x, adv * w, mask)
    ref.backward()
    assert torch.allclose(loss, ref, rtol=1e-12) and torch.allclose(grad, x.grad, rtol=1e-10, atol=1e-15)
    assert torch.equal(loss, vanilla) and torch.equal(grad, vgrad)  # verl's vanilla at w·Â, bit for bit
    assert metrics["actor/reweight/kept_frac"] == pytest.approx(k / len(valid))


@pytest.mark.parametrize("alpha,kappa", [(0.4, 2.0), (1.5, 1.25)])
def test_entropy_bonus_matches_float64_reference(alpha, kappa):
    old, cur, adv, mask = make_batch(batch=8, length=13, dtype=torch.float64, seed=33)
    adv[0] = 0.0  # Â = 0 gets no bonus
    ent = make_entropy(old.shape, seed=34)
    bonus = torch.minimum(alpha * ent, adv.abs() / kappa)  # the paper's ψ, written out
    shaped = adv + bonus
    assert (bonus >= 0).all() and (bonus[0] == 0).all()
    assert ((shaped < 0) == (adv < 0)).all()  # never flips a negative advantage
    assert ((bonus == alpha * ent) & mask).any() and ((bonus == adv.abs() / kappa) & mask & (adv != 0)).any()
    assert torch.allclose(entropy_bonus(adv, ent, alpha, kappa), bonus, rtol=0, atol=0)
    cfg = ReweightPolicyLossConfig(scheme="entropy_bonus", alpha=alpha, kappa=kappa)
    loss, grad, metrics = run(cfg, old, cur, adv, mask, LossInputs(ent))
    x = cur.clone().requires_grad_(True)
    ref = reference(old, x, shaped, mask)
    ref.backward()
    assert torch.allclose(loss, ref, rtol=1e-12) and torch.allclose(grad, x.grad, rtol=1e-10, atol=1e-15)
    assert metrics["actor/reweight/bonus_mean"] == pytest.approx(bonus[mask].mean().item(), rel=1e-6)
    assert metrics["actor/reweight/weight_mean"] == 1.0
    plain, *_ = run(ReweightPolicyLossConfig(scheme="none"), old, cur, adv, mask)
    assert not torch.allclose(loss, plain)


@pytest.mark.parametrize("scheme,apply_to", [("low_prob", "all"), ("normalize", "negative"), ("middle", "positive")])
def test_unit_mean_matches_float64_reference(scheme, apply_to):
    old, cur, adv, mask = make_batch(batch=8, length=13, dtype=torch.float64, seed=35)
    p = old.exp()
    w = {"low_prob": 1 + 0.2 * (1 - p), "normalize": 1 / (1.2 - p), "middle": 0.2 + p * (1 - p)}[scheme]
    keep = {"all": torch.ones_like(mask), "positive": adv > 0, "negative": adv < 0}[apply_to]
    w = torch.where(keep, w, torch.ones_like(w))
    w_unit = w / w[mask].mean()
    assert w_unit[mask].mean().item() == pytest.approx(1.0, abs=1e-14)
    s = ReweightPolicyLossConfig(scheme=scheme, alpha=0.2, apply_to=apply_to, unit_mean=True)
    w_sum, count = local_weight_sum(old, adv, mask, loss_settings(actor_config(s))).tolist()
    assert count == mask.sum() and w_sum == pytest.approx(w[mask].sum().item(), rel=1e-14)
    loss, grad, metrics = run(s, old, cur, adv, mask, LossInputs(weight_scale=count / w_sum))
    x = cur.clone().requires_grad_(True)
    ref = reference(old, x, w_unit * adv, mask)
    ref.backward()
    assert torch.allclose(loss, ref, rtol=1e-12) and torch.allclose(grad, x.grad, rtol=1e-10, atol=1e-15)
    assert metrics["actor/reweight/weight_mean"] == pytest.approx(1.0, abs=1e-6)
    assert metrics[GLOBAL_SHARE_METRICS[0]] == pytest.approx(1.0, abs=1e-6)  # one rank, one micro-batch


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scheme_none_with_unit_mean_is_still_verl_vanilla_bit_for_bit(dtype):
    old, cur, adv, mask = make_batch(dtype=dtype, seed=36)
    s = ReweightPolicyLossConfig(scheme="none", unit_mean=True)
    w_sum, count = local_weight_sum(old, adv, mask, loss_settings(actor_config(s))).tolist()
    assert w_sum == count  # w ≡ 1: scale exactly 1
    ours = run(s, old, cur, adv, mask, LossInputs(weight_scale=count / w_sum))
    theirs = loss_and_grad(compute_policy_loss_vanilla, old, cur, adv, mask, actor_config(PolicyLossConfig()))
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])


def _global_info(mask_full: torch.Tensor, dp_size: int) -> dict:
    return dict(dp_size=dp_size, batch_num_tokens=int(mask_full.sum()), global_batch_size=mask_full.shape[0])


SETTINGS = {
    "forking": dict(scheme="forking", alpha=0.2),
    "forking_unit": dict(scheme="forking", alpha=0.3, unit_mean=True),
    "entropy_bonus": dict(scheme="entropy_bonus", alpha=0.4),
    "low_prob_unit": dict(scheme="low_prob", alpha=0.2, unit_mean=True),
    "normalize_unit_negative": dict(scheme="normalize", alpha=0.2, unit_mean=True, apply_to="negative"),
}


@pytest.mark.parametrize("name", list(SETTINGS))
@pytest.mark.parametrize("loss_agg_mode", ["token-mean", "seq-mean-token-mean"])
@pytest.mark.parametrize("dp_size,micro_batches", [(1, 1), (1, 4), (2, 2), (4, 1)])
def test_gradient_invariant_to_data_parallel_and_micro_batching(name, loss_agg_mode, dp_size, micro_batches):
    """The global values are computed once per mini-batch as the actor hook does (τ_ρ over every rank's
    tokens, Σw and the count summed over ranks); each micro-batch's loss then sees its own slice."""
    old, cur, adv, mask = make_batch(batch=16, length=9, dtype=torch.float64, seed=39)
    ent = make_entropy(old.shape, seed=40)
    policy_loss = ReweightPolicyLossConfig(**SETTINGS[name])
    s = loss_settings(actor_config(policy_loss))
    tau = top_fraction_threshold(ent[mask], s.alpha).item() if s.scheme == "forking" else None
    ranks = list(torch.arange(16).chunk(dp_size))
    # unit_mean: the all-reduce of each rank's (Σw, count)
    sums = sum(local_weight_sum(old[r], adv[r], mask[r], s, ent[r], tau) for r in ranks)
    scale = (sums[1] / sums[0]).item() if s.unit_mean else 1.0

    whole = run(policy_loss, old, cur, adv, mask, LossInputs(ent, tau, scale), loss_agg_mode, **_global_info(mask, 1))
    grad = torch.zeros_like(cur)
    shares = {key: 0.0 for key in GLOBAL_SHARE_METRICS}
    for rank_rows in ranks:
        for rows in rank_rows.chunk(micro_batches):
            _, g, m = run(policy_loss, old[rows], cur[rows], adv[rows], mask[rows], LossInputs(ent[rows], tau, scale),
                          loss_agg_mode, **_global_info(mask, dp_size))  # fmt: skip
            grad[rows] += g / dp_size
            for key in shares:  # verl: SUM over micro-batches, mean over ranks
                shares[key] += m[key] / dp_size
    assert torch.allclose(grad, whole[1], rtol=1e-12, atol=1e-15)
    valid_w = local_weight_sum(old, adv, mask, s, ent, tau)
    # the metrics' sums are float32
    assert shares[GLOBAL_SHARE_METRICS[0]] == pytest.approx((valid_w[0] * scale / valid_w[1]).item(), rel=1e-6)
    if s.unit_mean:
        assert shares[GLOBAL_SHARE_METRICS[0]] == pytest.approx(1.0, rel=1e-6)
    if s.scheme == "forking":
        assert shares[GLOBAL_SHARE_METRICS[1]] == pytest.approx(math.ceil(s.alpha * int(mask.sum())) / int(mask.sum()))


def test_per_micro_batch_thresholds_would_not_be_invariant():
    """Why τ_ρ is global: a threshold taken inside each micro-batch gives another gradient (the test above can fail)."""
    old, cur, adv, mask = make_batch(batch=16, length=9, dtype=torch.float64, seed=39)
    ent = make_entropy(old.shape, seed=40)
    ent[:8] += 2.0  # the first half of the batch is the high-entropy half
    policy_loss = ReweightPolicyLossConfig(scheme="forking", alpha=0.2)
    info = _global_info(mask, 1)
    whole = run(policy_loss, old, cur, adv, mask, LossInputs(ent, top_fraction_threshold(ent[mask], 0.2).item()), **info)
    grad = torch.zeros_like(cur)
    for rows in torch.arange(16).chunk(2):
        local_tau = top_fraction_threshold(ent[rows][mask[rows]], 0.2).item()
        grad[rows] += run(policy_loss, old[rows], cur[rows], adv[rows], mask[rows], LossInputs(ent[rows], local_tau), **info)[1]
    assert not torch.allclose(grad, whole[1])


def test_metric_keys_are_the_same_for_the_new_settings():
    old, cur, adv, mask = make_batch(seed=41)
    ent = make_entropy(old.shape, seed=42)
    base = run(ReweightPolicyLossConfig(), old, cur, adv, mask)[2]
    for policy_loss in [ReweightPolicyLossConfig(**kw) for kw in SETTINGS.values()]:
        full = run(policy_loss, old, cur, adv, mask, LossInputs(ent, 1.0, 1.3))[2]
        empty = run(policy_loss, old[:1], cur[:1], adv[:1], torch.zeros_like(mask[:1]), LossInputs(ent[:1], 1.0, 1.3))[2]
        assert full.keys() == empty.keys() == base.keys()
        assert all(isinstance(v, float) and math.isfinite(v) for m in (full, empty) for v in m.values())


@pytest.mark.parametrize("kwargs", [dict(scheme="forking"), dict(scheme="entropy_bonus"), dict(unit_mean=True)])
def test_missing_inputs_are_refused_naming_the_setting(kwargs):
    old, cur, adv, mask = make_batch(seed=43)
    with pytest.raises(ValueError, match=r"policy_loss\.(scheme=forking|scheme=entropy_bonus|unit_mean=true) needs"):
        run(ReweightPolicyLossConfig(**kwargs), old, cur, adv, mask)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(scheme="forking", alpha=0.0), r"policy_loss\.alpha=0\.0 with .*scheme=forking"),
        (dict(scheme="forking", alpha=1.5), r"policy_loss\.alpha=1\.5 with .*scheme=forking"),
        (dict(scheme="entropy_bonus", kappa=1.0), r"policy_loss\.kappa"),
        (dict(scheme="entropy_bonus", apply_to="positive"), r"policy_loss\.apply_to='positive' with .*entropy_bonus"),
        (dict(unit_mean=True, prob_source="current"), r"policy_loss\.unit_mean=true needs .*prob_source=old"),
        (dict(unit_mean="yes"), r"policy_loss\.unit_mean"),
    ],
)
def test_bad_new_settings_refused_naming_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ReweightPolicyLossConfig(**kwargs)


def test_new_settings_are_plain_overrides():
    """unit_mean and kappa are in configs/method/reweight.yaml: a plain override (no `+`) sets them."""
    from verl.utils.config import omega_conf_to_dataclass

    from reweight.checks import check_config
    from reweight.train import compose_config

    overrides = ["actor_rollout_ref.model.path=/models/any", f"{KEY}.scheme=entropy_bonus", f"{KEY}.alpha=0.4",
                 f"{KEY}.kappa=3", f"{KEY}.unit_mean=true"]  # fmt: skip
    cfg = compose_config("dapo_reweight", overrides)
    check_config(cfg)
    pl = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor.policy_loss)
    assert (pl.scheme, pl.alpha, pl.kappa, pl.unit_mean) == ("entropy_bonus", 0.4, 3.0, True)
    default = omega_conf_to_dataclass(compose_config("dapo_reweight", overrides[:1]).actor_rollout_ref.actor.policy_loss)
    assert (default.unit_mean, default.kappa) == (False, 2.0)
