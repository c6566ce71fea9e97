"""The ``reweight`` loss against an independent float64 reference, verl's ``vanilla`` loss, and verl's plumbing."""

from __future__ import annotations

import math

import pytest
import torch
from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY, compute_policy_loss_vanilla, get_policy_loss_fn
from verl.workers.config import FSDPActorConfig, PolicyLossConfig

from reweight.loss import ReweightPolicyLossConfig, compute_policy_loss_reweight
from reweight.weights import APPLY_TO, PROB_SCHEMES, token_weights

AGG_MODES = ["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
EPS_LOW, EPS_HIGH, CLIP_C = 0.2, 0.28, 10.0


def actor_config(policy_loss=None, loss_agg_mode="token-mean", compile=False, **global_batch_info) -> FSDPActorConfig:
    """A real verl actor config; eager weighting unless ``compile`` (compiling costs seconds per dtype)."""
    cfg = FSDPActorConfig(
        use_torch_compile=compile,
        strategy="fsdp2",
        rollout_n=1,
        ppo_mini_batch_size=1,
        ppo_micro_batch_size_per_gpu=1,
        clip_ratio_low=EPS_LOW,
        clip_ratio_high=EPS_HIGH,
        clip_ratio_c=CLIP_C,
        loss_agg_mode=loss_agg_mode,
        policy_loss=policy_loss if policy_loss is not None else ReweightPolicyLossConfig(),
    )
    cfg.global_batch_info.update(global_batch_info)
    return cfg


def make_batch(batch=6, length=11, dtype=torch.float32, seed=0):
    """old/current log-probs near each other (some ratios outside the clip range), mixed-sign advantages."""
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(batch, length, generator=g, dtype=torch.float64) * 4  # p in (e^-4, 1)
    cur = old + 0.4 * torch.randn(batch, length, generator=g, dtype=torch.float64)
    cur = cur.clamp(max=0)
    adv = torch.randn(batch, 1, generator=g, dtype=torch.float64).expand(batch, length).clone()
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    return old.to(dtype), cur.to(dtype), adv.to(dtype), mask


def reference_loss(old, cur, adv, mask, alpha):
    """docs/method.md §1 written out directly in float64: token-mean of the dual-clipped surrogate at w·A."""
    w = 1 + alpha * (1 - old.exp())
    a = w * adv
    ratio = torch.exp(torch.clamp(cur - old, -20, 20))
    surrogate = torch.minimum(ratio * a, torch.clamp(ratio, 1 - EPS_LOW, 1 + EPS_HIGH) * a)
    per_token = -surrogate
    dual = torch.minimum(per_token, -CLIP_C * a)
    per_token = torch.where(a < 0, dual, per_token)
    m = mask.double()
    return (per_token * m).sum() / m.sum()


def loss_and_grad(fn, old, cur, adv, mask, config, rollout_is_weights=None):
    cur = cur.clone().requires_grad_(True)
    loss, metrics = fn(
        old_log_prob=old,
        log_prob=cur,
        advantages=adv,
        response_mask=mask,
        loss_agg_mode=config.loss_agg_mode,
        config=config,
        rollout_is_weights=rollout_is_weights,
    )
    loss.backward()
    return loss.detach(), cur.grad, metrics


@pytest.mark.parametrize("alpha", [0.1, 0.2, 1.5])
def test_low_prob_matches_float64_reference(alpha):
    old, cur, adv, mask = make_batch(dtype=torch.float64)
    cfg = actor_config(ReweightPolicyLossConfig(scheme="low_prob", alpha=alpha))
    loss, grad, _ = loss_and_grad(compute_policy_loss_reweight, old, cur, adv, mask, cfg)
    x = cur.clone().requires_grad_(True)
    ref = reference_loss(old, x, adv, mask, alpha)
    ref.backward()
    assert torch.allclose(loss, ref, rtol=1e-12, atol=1e-12)
    assert torch.allclose(grad, x.grad, rtol=1e-10, atol=1e-12)
    # The weighting really changes the result (the test would not notice a no-op otherwise).
    plain = reference_loss(old, cur, adv, mask, 0.0)
    assert not torch.allclose(ref, plain)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_is_weights", [False, True])
@pytest.mark.parametrize("apply_to", APPLY_TO)
@pytest.mark.parametrize("settings", [dict(scheme="none"), dict(alpha=0.0), dict(scheme="dominate", alpha=0.0)])
def test_no_weighting_equals_verl_vanilla_exactly(dtype, with_is_weights, settings, apply_to):
    policy_loss = ReweightPolicyLossConfig(**settings, apply_to=apply_to)
    old, cur, adv, mask = make_batch(dtype=dtype, seed=3)
    is_w = torch.rand(old.shape, generator=torch.Generator().manual_seed(9)).to(dtype) if with_is_weights else None
    ours = loss_and_grad(compute_policy_loss_reweight, old, cur, adv, mask, actor_config(policy_loss), is_w)
    theirs = loss_and_grad(compute_policy_loss_vanilla, old, cur, adv, mask, actor_config(PolicyLossConfig()), is_w)
    assert ours[0].dtype == theirs[0].dtype
    assert torch.equal(ours[0], theirs[0])
    assert torch.equal(ours[1], theirs[1])
    for key in ("actor/pg_clipfrac", "actor/ppo_kl", "actor/pg_clipfrac_lower"):
        assert ours[2][key] == theirs[2][key]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_weighting_equals_eager(dtype):
    """verl's default actor.use_torch_compile=True runs the weighting as one compiled kernel: same results."""
    old, cur, adv, mask = make_batch(batch=5, length=37, dtype=dtype, seed=14)
    policy_loss = ReweightPolicyLossConfig(alpha=0.2)
    eager = loss_and_grad(compute_policy_loss_reweight, old, cur, adv, mask, actor_config(policy_loss))
    fused = loss_and_grad(compute_policy_loss_reweight, old, cur, adv, mask, actor_config(policy_loss, compile=True))
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-3)
    assert torch.allclose(fused[0].float(), eager[0].float(), **tol)
    assert torch.allclose(fused[1].float(), eager[1].float(), **tol)
    for key, value in eager[2].items():
        # bf16: inductor computes the weights in fp32, eager in bf16 (resolution 2^-7 near 1)
        assert fused[2][key] == pytest.approx(value, rel=1e-5 if dtype == torch.float32 else 1e-2), key
    # alpha = 0 stays verl's loss bit for bit when compiled too
    zero = ReweightPolicyLossConfig(alpha=0.0)
    ours = loss_and_grad(compute_policy_loss_reweight, old, cur, adv, mask, actor_config(zero, compile=True))
    theirs = loss_and_grad(compute_policy_loss_vanilla, old, cur, adv, mask, actor_config(PolicyLossConfig()))
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])


def test_rollout_is_weights_multiply_the_reweighted_loss():
    old, cur, adv, mask = make_batch(dtype=torch.float64, seed=4)
    is_w = torch.rand(old.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64) + 0.5
    cfg = actor_config(ReweightPolicyLossConfig(alpha=0.2))
    with_w, *_ = loss_and_grad(compute_policy_loss_reweight, old, cur, adv, mask, cfg, is_w)
    # Reference: scale each token's reference term by its IS weight.
    w = 1 + 0.2 * (1 - old.exp())
    a = w * adv
    ratio = torch.exp(torch.clamp(cur - old, -20, 20))
    per_token = -torch.minimum(ratio * a, torch.clamp(ratio, 1 - EPS_LOW, 1 + EPS_HIGH) * a)
    per_token = torch.where(a < 0, torch.minimum(per_token, -CLIP_C * a), per_token) * is_w
    m = mask.double()
    assert torch.allclose(with_w, (per_token * m).sum() / m.sum(), rtol=1e-12)


def closed_form_weights(p: torch.Tensor, scheme: str, alpha: float) -> torch.Tensor:
    """Each scheme's w(p) written out independently of reweight.weights (float64)."""
    return {
        "none": torch.ones_like(p),
        "low_prob": 1 + alpha - alpha * p,
        "dominate": alpha * p + 1 - alpha,
        "focal": torch.exp(alpha * torch.log1p(-p)),  # (1 - p)^α, p < 1 here
        "middle": alpha + p - p * p,
        "normalize": 1 / (1 + alpha - p),
    }[scheme]


def sign_selected(w: torch.Tensor, adv: torch.Tensor, apply_to: str) -> torch.Tensor:
    """The reference sign selection: 1 on tokens whose advantage does not have the chosen sign."""
    keep = {"all": torch.ones_like(adv, dtype=torch.bool), "positive": adv > 0, "negative": adv < 0}[apply_to]
    return torch.where(keep, w, torch.ones_like(w))


@pytest.mark.parametrize("apply_to", APPLY_TO)
@pytest.mark.parametrize(
    "scheme,alpha",
    [("dominate", 0.2), ("focal", 0.5), ("low_prob", 0.2), ("middle", 0.2), ("normalize", 0.2), ("normalize", 0.05)],
)
def test_every_scheme_scales_advantages_by_its_closed_form(scheme, alpha, apply_to):
    old, cur, adv, mask = make_batch(dtype=torch.float64, seed=6)
    assert (adv > 0).any() and (adv < 0).any()
    p = old.exp()
    closed = closed_form_weights(p, scheme, alpha)
    assert torch.allclose(token_weights(p, scheme, alpha), closed, rtol=1e-14)
    cfg = actor_config(ReweightPolicyLossConfig(scheme=scheme, alpha=alpha, apply_to=apply_to))
    ours, grad, metrics = loss_and_grad(compute_policy_loss_reweight, old, cur, adv, mask, cfg)
    applied = sign_selected(closed, adv, apply_to)
    vanilla, vgrad, _ = loss_and_grad(compute_policy_loss_vanilla, old, cur, adv * applied, mask, actor_config(PolicyLossConfig()))
    assert torch.allclose(ours, vanilla, rtol=1e-12) and torch.allclose(grad, vgrad, rtol=1e-12, atol=1e-15)
    # The metrics describe the weights actually applied.
    assert metrics["actor/reweight/weight_mean"] == pytest.approx(applied[mask].mean().item(), rel=1e-6)
    assert metrics["actor/reweight/weight_max"] == pytest.approx(applied[mask].max().item(), rel=1e-6)
    # Not a no-op: the weighting changes the loss.
    plain, *_ = loss_and_grad(compute_policy_loss_vanilla, old, cur, adv, mask, actor_config(PolicyLossConfig()))
    assert not torch.allclose(ours, plain)


def test_prob_source_current_uses_detached_current_policy():
    old, cur, adv, mask = make_batch(dtype=torch.float64, seed=7)
    cfg = actor_config(ReweightPolicyLossConfig(alpha=0.3, prob_source="current"))
    ours, grad, _ = loss_and_grad(compute_policy_loss_reweight, old, cur, adv, mask, cfg)
    w = 1 + 0.3 * (1 - cur.exp())  # a constant: no gradient flows through the weight
    ref, rgrad, _ = loss_and_grad(compute_policy_loss_vanilla, old, cur, adv * w, mask, actor_config(PolicyLossConfig()))
    assert torch.equal(ours, ref) and torch.equal(grad, rgrad)


@pytest.mark.parametrize("apply_to", APPLY_TO)
@pytest.mark.parametrize("scheme", PROB_SCHEMES)
def test_metric_keys_are_the_same_for_every_scheme_and_micro_batch(scheme, apply_to):
    old, cur, adv, mask = make_batch(seed=8)
    cfg = actor_config(ReweightPolicyLossConfig(scheme=scheme, apply_to=apply_to))
    reference = actor_config(ReweightPolicyLossConfig())
    _, _, base = loss_and_grad(compute_policy_loss_reweight, old, cur, adv, mask, reference)
    _, _, full = loss_and_grad(compute_policy_loss_reweight, old, cur, adv, mask, cfg)
    _, _, empty = loss_and_grad(compute_policy_loss_reweight, old[:1], cur[:1], adv[:1], torch.zeros_like(mask[:1]), cfg)
    one_sign = adv[:2].abs()  # a micro-batch whose advantages all have one sign (nothing to weight for `negative`)
    _, _, positive = loss_and_grad(compute_policy_loss_reweight, old[:2], cur[:2], one_sign, mask[:2], cfg)
    assert full.keys() == empty.keys() == positive.keys() == base.keys()
    assert all(isinstance(v, float) and math.isfinite(v) for m in (full, empty, positive) for v in m.values())


def test_metrics_are_scalars_with_stable_keys():
    old, cur, adv, mask = make_batch(seed=8)
    cfg = actor_config(ReweightPolicyLossConfig(alpha=0.2))
    _, _, m1 = loss_and_grad(compute_policy_loss_reweight, old, cur, adv, mask, cfg)
    _, _, m2 = loss_and_grad(compute_policy_loss_reweight, old[:1], cur[:1], adv[:1], torch.zeros_like(mask[:1]), cfg)
    assert m1.keys() == m2.keys()
    assert all(isinstance(v, float) for v in m1.values())
    p = old.exp()[mask]
    w = 1 + 0.2 * (1 - p)
    assert m1["actor/reweight/weight_mean"] == pytest.approx(w.mean().item(), rel=1e-6)
    assert m1["actor/reweight/weight_min"] == pytest.approx(w.min().item(), rel=1e-6)
    assert m1["actor/reweight/weight_max"] == pytest.approx(w.max().item(), rel=1e-6)
    assert m1["actor/reweight/prob_mean"] == pytest.approx(p.mean().item(), rel=1e-6)
    assert m1["actor/reweight/low_prob_frac"] == pytest.approx((p < 0.5).float().mean().item())
    assert m2["actor/reweight/weight_mean"] == 1.0 and m2["actor/reweight/low_prob_frac"] == 0.0


def test_masked_minus_inf_old_log_prob_and_bf16_give_finite_results():
    old, cur, adv, mask = make_batch(seed=10)
    old = old.masked_fill(~mask, float("-inf"))
    cfg = actor_config(ReweightPolicyLossConfig(alpha=0.2))
    loss, grad, metrics = loss_and_grad(compute_policy_loss_reweight, old, cur, adv, mask, cfg)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert all(math.isfinite(v) for v in metrics.values())
    b_loss, b_grad, _ = loss_and_grad(
        compute_policy_loss_reweight, old.bfloat16(), cur.bfloat16(), adv.bfloat16(), mask, cfg
    )
    assert b_loss.dtype == torch.bfloat16 and torch.isfinite(b_loss) and torch.isfinite(b_grad.float()).all()
    assert b_loss.float().item() == pytest.approx(loss.item(), rel=3e-2, abs=1e-2)


def _global_info(mask_full: torch.Tensor, dp_size: int) -> dict:
    """What verl's engine puts in ``global_batch_info`` for one mini-batch split over ``dp_size`` ranks."""
    return dict(dp_size=dp_size, batch_num_tokens=int(mask_full.sum()), global_batch_size=mask_full.shape[0])


@pytest.mark.parametrize("apply_to", APPLY_TO)
@pytest.mark.parametrize("scheme", PROB_SCHEMES)
@pytest.mark.parametrize("loss_agg_mode", AGG_MODES)
@pytest.mark.parametrize("dp_size,micro_batches", [(1, 1), (1, 2), (1, 4), (2, 1), (2, 2), (4, 1), (4, 2)])
def test_gradient_invariant_to_data_parallel_and_micro_batching(loss_agg_mode, dp_size, micro_batches, scheme, apply_to):
    old, cur, adv, mask = make_batch(batch=16, length=9, dtype=torch.float64, seed=11)
    assert (adv > 0).any() and (adv < 0).any()  # both signs, so `positive` / `negative` select something
    policy_loss = ReweightPolicyLossConfig(scheme=scheme, alpha=0.2, apply_to=apply_to)
    whole_cfg = actor_config(policy_loss, loss_agg_mode, **_global_info(mask, 1))
    _, whole_grad, _ = loss_and_grad(compute_policy_loss_reweight, old, cur, adv, mask, whole_cfg)

    # Each rank's gradient is the sum over its micro-batches; DDP/FSDP average the ranks' gradients.
    grad = torch.zeros_like(cur)
    cfg = actor_config(policy_loss, loss_agg_mode, **_global_info(mask, dp_size))
    for rank_rows in torch.arange(16).chunk(dp_size):
        for rows in rank_rows.chunk(micro_batches):
            _, g, _ = loss_and_grad(compute_policy_loss_reweight, old[rows], cur[rows], adv[rows], mask[rows], cfg)
            grad[rows] += g / dp_size
    assert torch.allclose(grad, whole_grad, rtol=1e-12, atol=1e-15)


def test_registered_in_verl_and_called_through_ppo_loss():
    """verl's own ``ppo_loss`` (the engine's loss entry) dispatches to us and returns our metrics."""
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.losses import ppo_loss

    assert get_policy_loss_fn("reweight") is compute_policy_loss_reweight
    assert POLICY_LOSS_REGISTRY["reweight"] is compute_policy_loss_reweight

    old, cur, adv, mask = make_batch(batch=4, length=6, seed=12)
    b, r = mask.shape
    prompt_len = torch.tensor([3, 2, 4, 1])
    p_max = int(prompt_len.max())
    prompts = torch.ones(b, p_max, dtype=torch.long)
    attention = torch.cat([torch.arange(p_max).flip(0)[None, :] < prompt_len[:, None], mask], dim=1).long()
    # The model's flat (no-padding) log-probs: for a sequence of length L, position i predicts token i+1.
    flat = []
    for i in range(b):
        n_resp = int(mask[i].sum())
        flat += [torch.full((int(prompt_len[i]) - 1,), -7.0), cur[i, :n_resp], torch.tensor([-7.0])]
    log_probs = torch.cat(flat).requires_grad_(True)

    data = TensorDict(
        {"prompts": prompts, "responses": torch.ones(b, r, dtype=torch.long), "attention_mask": attention,
         "response_mask": mask.long(), "old_log_probs": old, "advantages": adv},
        batch_size=[b],
    )
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=int(mask.sum()), global_batch_size=b)
    cfg = actor_config(ReweightPolicyLossConfig(alpha=0.2))
    loss, metrics = ppo_loss(cfg, {"log_probs": log_probs}, data)

    expected, _, _ = loss_and_grad(compute_policy_loss_reweight, old, cur.masked_fill(~mask, 0.0), adv, mask, cfg)
    assert torch.allclose(loss.detach(), expected, rtol=1e-6)
    for key in ("actor/reweight/weight_mean", "actor/reweight/prob_mean", "actor/pg_clipfrac", "actor/pg_loss"):
        assert key in metrics


@pytest.mark.parametrize(
    "kwargs,key",
    [
        (dict(alpha=-0.1), "alpha"),
        (dict(alpha=float("nan")), "alpha"),
        (dict(alpha=float("inf")), "alpha"),
        (dict(scheme="uniform"), "scheme"),
        (dict(prob_source="ref"), "prob_source"),
        (dict(scheme="dominate", alpha=1.5), "alpha"),
        (dict(scheme="normalize", alpha=0.0), "alpha"),
        (dict(scheme="normalize", alpha=0), "alpha"),
        (dict(scheme="middle", alpha=-0.5), "alpha"),
        (dict(apply_to="pos"), "apply_to"),
        (dict(apply_to="ALL"), "apply_to"),
        (dict(loss_mode="vanilla"), "loss_mode"),
    ],
)
def test_bad_settings_refused_naming_the_key(kwargs, key):
    with pytest.raises(ValueError, match=rf"policy_loss\.{key}"):
        ReweightPolicyLossConfig(**kwargs)


def test_reweight_loss_without_our_config_class_is_refused():
    old, cur, adv, mask = make_batch(seed=13)
    with pytest.raises(ValueError, match=r"policy_loss\._target_=reweight\.loss\.ReweightPolicyLossConfig"):
        compute_policy_loss_reweight(old, cur, adv, mask, config=actor_config(PolicyLossConfig(loss_mode="reweight")))


# Added with the fused surrogate (the tests above are unchanged): the reweighted loss no longer calls verl's
# vanilla function when w is not identically 1, so it is checked against it here, bit for bit where eager.
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("loss_agg_mode", AGG_MODES)
def test_eager_surrogate_is_verl_vanilla_at_weighted_advantages_bit_for_bit(loss_agg_mode, dtype):
    old, cur, adv, mask = make_batch(batch=8, length=13, dtype=dtype, seed=21)
    cur = cur.clone()
    cur[:, ::3] = 0.0  # ratios up to e^4, past clip_ratio_c, so the dual clip applies too
    is_w = (torch.rand(old.shape, generator=torch.Generator().manual_seed(22)) + 0.5).to(dtype)
    info = dict(dp_size=2, batch_num_tokens=2 * int(mask.sum()), global_batch_size=16)
    cfg = actor_config(ReweightPolicyLossConfig(scheme="middle", alpha=0.3, apply_to="negative"), loss_agg_mode, **info)
    ours = loss_and_grad(compute_policy_loss_reweight, old, cur, adv, mask, cfg, is_w)
    w = torch.where(adv < 0, token_weights(old.exp(), "middle", 0.3), torch.ones_like(old))
    theirs = loss_and_grad(compute_policy_loss_vanilla, old, cur, adv * w, mask, actor_config(PolicyLossConfig(), loss_agg_mode, **info), is_w)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    for key in ("actor/pg_clipfrac", "actor/ppo_kl", "actor/pg_clipfrac_lower"):
        # verl sums in the input dtype, we in float32
        assert ours[2][key] == pytest.approx(theirs[2][key], rel=1e-5 if dtype != torch.bfloat16 else 2e-2, abs=1e-6), key
    assert 0 < ours[2]["actor/pg_clipfrac"] < 1 and 0 < ours[2]["actor/pg_clipfrac_lower"] < 1  # both clip regions hit


@pytest.mark.parametrize(
    "loss_agg_mode,scheme,apply_to,with_is_weights",
    [("token-mean", "low_prob", "all", True), ("seq-mean-token-sum", "focal", "positive", True),
     ("seq-mean-token-mean", "normalize", "all", False), ("seq-mean-token-sum-norm", "dominate", "negative", True),
     ("token-sum", "middle", "all", False)],
)  # fmt: skip
def test_compiled_surrogate_equals_eager(loss_agg_mode, scheme, apply_to, with_is_weights):
    """actor.use_torch_compile: weighting, surrogate, metrics and backward compiled together give the eager values."""
    old, cur, adv, mask = make_batch(batch=7, length=29, seed=23)
    is_w = torch.rand(old.shape, generator=torch.Generator().manual_seed(24)) + 0.5 if with_is_weights else None
    info = dict(dp_size=2, batch_num_tokens=2 * int(mask.sum()), global_batch_size=14)
    policy_loss = ReweightPolicyLossConfig(scheme=scheme, alpha=0.4, apply_to=apply_to)
    eager = loss_and_grad(compute_policy_loss_reweight, old, cur, adv, mask, actor_config(policy_loss, loss_agg_mode, **info), is_w)
    fused = loss_and_grad(
        compute_policy_loss_reweight, old, cur, adv, mask, actor_config(policy_loss, loss_agg_mode, compile=True, **info), is_w
    )
    torch.testing.assert_close(fused[0], eager[0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(fused[1], eager[1], rtol=1e-6, atol=1e-7)
    assert fused[2].keys() == eager[2].keys()
    for key, value in eager[2].items():
        assert fused[2][key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
