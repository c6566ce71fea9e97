"""The direction monitor's math (reweight.direction) against naive references, and its worker-side forward of the
initial weights (reweight.monitor.BaseWeights) against reweight-analyze's Δlog p on a trained pair, under FSDP2."""

from __future__ import annotations

import copy
import math
import random

import numpy as np
import pytest
import torch

from reweight.direction import HIST_KEYS, correlation, direction_stats, histograms
from reweight.monitor import BaseWeights, batch_direction, is_monitored


def _quantile(values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default 'linear' method), by hand."""
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _naive(delta, mask, adv, w) -> dict[str, float]:
    d, a, ws = [], [], []
    for i in range(len(delta)):
        for j in range(len(delta[i])):
            if mask[i][j]:
                d.append(float(delta[i][j]))
                a.append(float(adv[i][j]))
                ws.append(float(w[i][j]))
    n = len(d)
    pos = [x for x, y in zip(d, a) if y > 0]
    neg = [x for x, y in zip(d, a) if y < 0]
    md, mw = sum(d) / n, sum(ws) / n
    cov = sum((x - md) * (y - mw) for x, y in zip(d, ws))
    sd = math.sqrt(sum((x - md) ** 2 for x in d))
    sw = math.sqrt(sum((y - mw) ** 2 for y in ws))
    return {
        "direction/logp_diff_mean": md,
        "direction/logp_diff_q05": _quantile(d, 0.05),
        "direction/logp_diff_q95": _quantile(d, 0.95),
        "direction/frac_abs_gt_0.5": sum(abs(x) > 0.5 for x in d) / n,
        "direction/frac_abs_gt_1": sum(abs(x) > 1 for x in d) / n,
        "direction/logp_diff_mean_pos_adv": sum(pos) / len(pos),
        "direction/logp_diff_mean_neg_adv": sum(neg) / len(neg),
        "direction/corr_weight": cov / (sd * sw),
    }


def test_direction_stats_equal_a_naive_reference():
    rng = np.random.default_rng(0)
    delta = rng.normal(0, 0.8, size=(6, 11))
    mask = rng.random((6, 11)) < 0.7
    adv = np.repeat(rng.normal(size=(6, 1)), 11, axis=1)  # one advantage per response, as GRPO gives
    w = 1 + 0.2 * (1 - rng.random((6, 11)))
    delta[~mask] = 99.0  # padding must not count
    got = direction_stats(delta, mask, adv, w)
    want = _naive(delta.tolist(), mask.tolist(), adv.tolist(), w.tolist())
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


def test_degenerate_batches_are_reported_not_guessed():
    mask = np.ones((2, 3), dtype=bool)
    zero = direction_stats(np.zeros((2, 3)), mask, np.ones((2, 3)), np.full((2, 3), 1.1))
    # Δlog p ≡ 0 (step 1): every statistic 0; no negative-advantage token: its mean is NaN, not 0
    assert math.isnan(zero.pop("direction/logp_diff_mean_neg_adv"))
    assert all(v == 0.0 for v in zero.values()), zero
    assert correlation(np.array([1.0, 1.0]), np.array([0.0, 3.0])) == 0.0
    with pytest.raises(ValueError, match="no token"):
        direction_stats(np.zeros((1, 2)), np.zeros((1, 2), dtype=bool))


def test_histograms_count_response_tokens_only():
    rng = np.random.default_rng(1)
    delta, prob = rng.normal(size=(4, 9)), rng.random((4, 9))
    mask = rng.random((4, 9)) < 0.5
    hist = histograms(delta, prob, mask, weights=1 + 0.2 * (1 - prob), bins=16)
    assert set(hist) == set(HIST_KEYS.values())
    for counts, edges in hist.values():
        assert counts.sum() == mask.sum() and len(edges) == 17
    assert hist[HIST_KEYS["prob"]][1][0] == 0.0 and hist[HIST_KEYS["prob"]][1][-1] == 1.0


def test_batch_direction_weights_come_from_reweight_weights():
    from reweight.weights import token_weights

    g = torch.Generator().manual_seed(0)
    old = -torch.rand(3, 5, generator=g) * 3
    base = old - torch.randn(3, 5, generator=g)
    adv = torch.tensor([[1.0], [-1.0], [0.5]]).expand(3, 5)
    mask = torch.ones(3, 5)
    scalars, hists = batch_direction(old, base, adv, mask, ("low_prob", 0.2, "all"))
    w = token_weights(old.double().exp(), "low_prob", 0.2).numpy()
    assert scalars["direction/corr_weight"] == pytest.approx(correlation(w.ravel(), (old - base).double().numpy().ravel()))
    assert HIST_KEYS["weight"] in hists
    scalars, hists = batch_direction(old, base, adv, mask, None)  # another loss: no weight
    assert "direction/corr_weight" not in scalars and HIST_KEYS["weight"] not in hists


def test_weight_settings_only_for_our_loss_with_a_weight_of_p():
    """corr_weight needs w(p): the entropy schemes' weights are not functions of p, so they get none (not a crash)."""
    from omegaconf import OmegaConf

    from reweight.configs import POLICY_LOSS_KEY
    from reweight.monitor import loss_weight_settings

    def cfg(**policy_loss):
        out = OmegaConf.create({})
        OmegaConf.update(out, POLICY_LOSS_KEY, policy_loss, force_add=True)
        return out

    assert loss_weight_settings(cfg(loss_mode="reweight", scheme="low_prob", alpha=0.1)) == ("low_prob", 0.1, "all")
    assert loss_weight_settings(cfg(loss_mode="reweight", scheme="dominate", alpha=0.2, apply_to="positive")) == (
        "dominate", 0.2, "positive")
    assert loss_weight_settings(cfg(loss_mode="vanilla")) is None
    for scheme in ("forking", "entropy_bonus"):
        assert loss_weight_settings(cfg(loss_mode="reweight", scheme=scheme, alpha=0.2)) is None


def test_monitored_steps_start_at_one():
    assert [s for s in range(1, 25) if is_monitored(s, 10)] == [1, 11, 21]
    assert not any(is_monitored(s, 0) for s in range(1, 5))
    assert all(is_monitored(s, 1) for s in range(1, 5))


# ----------------------------------------------------------------------------------------- worker side


@pytest.fixture(scope="module")
def gloo_world():
    """A one-process gloo group, as verl's CPU backend runs FSDP2 on."""
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    port = random.randint(20000, 40000)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _fsdp2(model):
    """verl's FSDP2 layout: each decoder layer a unit, then the root."""
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def _trained(model, steps: int = 3, seed: int = 0):
    """The model after a few Adam steps of next-token loss on random sequences (a 'trained' RL model)."""
    model = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with torch.enable_grad():
        for _ in range(steps):
            ids = torch.randint(3, 200, (4, 20), generator=g)
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad()
    return model.eval()


def _logp(model, ids, mask):
    """log π(token | prefix) by a plain full-logits forward (not the analysis's chunked head)."""
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
    return torch.cat([torch.zeros(ids.shape[0], 1), logp], dim=1)


@torch.no_grad()
def test_base_forward_equals_reweight_analyze_on_a_trained_pair(tiny_pair, gloo_world):
    from reweight.analysis.metrics import token_metrics

    _, base, _ = tiny_pair
    base = copy.deepcopy(base).eval()
    rl = _trained(base)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 200, (3, 16), generator=g)
    attn = torch.ones_like(ids)
    resp = torch.zeros_like(ids)
    resp[:, 6:] = 1
    want = token_metrics(base, rl, input_ids=ids, attention_mask=attn, response_mask=resp, compiled=False)["delta_logp"]

    actor = _fsdp2(copy.deepcopy(rl))  # the actor: trained weights, sharded like verl's
    snapshot = BaseWeights(_fsdp2(copy.deepcopy(base)))  # what the worker keeps from its initial weights
    before = _logp(actor, ids, attn)
    with snapshot.swapped_in(actor):
        at_base = _logp(actor, ids, attn)
    after = _logp(actor, ids, attn)
    delta = (before - at_base) * resp
    assert (delta - want).abs().max().item() < 1e-4
    assert want[resp.bool()].abs().max().item() > 1e-2  # the pair differs: the check is not 0 == 0
    assert torch.equal(after, before)  # the trained weights are back, bit for bit
    # and the monitor's first step: the snapshot of the actor's own weights gives Δlog p = 0 exactly
    own = BaseWeights(actor)
    with own.swapped_in(actor):
        assert torch.equal(_logp(actor, ids, attn), before)
