"""The token-weight schemes against their closed forms, sign selection by hand, and early refusal of bad settings."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla
from verl.workers.config import FSDPActorConfig, PolicyLossConfig

from reweight.loss import ReweightPolicyLossConfig, compute_policy_loss_reweight, reweight_advantages
from reweight.weights import APPLY_TO, PROB_SCHEMES, SCHEMES, select_by_sign, token_weights, validate

# p on a grid that includes both ends, as Python floats (the reference below is scalar math, not torch).
GRID = [0.0, 1e-6, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1 - 1e-6, 1.0]


def closed_form(p: float, scheme: str, alpha: float) -> float:
    """w(p) of each scheme written as scalar math."""
    if scheme == "none":
        return 1.0
    if scheme == "low_prob":
        return 1.0 + alpha * (1.0 - p)
    if scheme == "dominate":
        return alpha * p + (1.0 - alpha)
    if scheme == "focal":
        return 1.0 if alpha == 0 else (1.0 - p) ** alpha
    if scheme == "middle":
        return alpha + p * (1.0 - p)
    if scheme == "normalize":
        return 1.0 / (1.0 + alpha - p)
    raise AssertionError(scheme)


def test_the_scheme_list_is_what_the_docs_describe():
    assert PROB_SCHEMES == ("none", "low_prob", "dominate", "focal", "middle", "normalize")
    assert SCHEMES == PROB_SCHEMES + ("forking", "entropy_bonus")
    assert APPLY_TO == ("all", "positive", "negative")


@pytest.mark.parametrize(
    "scheme,alpha",
    # normalize with α = 0 is refused by validation (tested below)
    [(s, a) for s in PROB_SCHEMES for a in (0.0, 0.05, 0.2, 0.5, 1.0) if not (s == "normalize" and a == 0)],
)
def test_every_scheme_matches_its_closed_form_in_float64(scheme, alpha):
    p = torch.tensor(GRID, dtype=torch.float64).reshape(1, -1)
    w = token_weights(p, scheme, alpha)
    assert w.dtype == torch.float64 and w.shape == p.shape and not w.requires_grad
    expected = torch.tensor([closed_form(x, scheme, alpha) for x in GRID], dtype=torch.float64).reshape(1, -1)
    assert torch.allclose(w, expected, rtol=1e-13, atol=0), (scheme, alpha, w - expected)


def test_shapes_of_the_new_schemes():
    """middle peaks at p = 0.5 with value α + 1/4; normalize makes w·(1 − p) (the logit-gradient size) ≈ 1."""
    p = torch.linspace(0, 1, 10001, dtype=torch.float64)
    middle = token_weights(p, "middle", 0.2)
    assert p[middle.argmax()].item() == pytest.approx(0.5) and middle.max().item() == pytest.approx(0.45)
    assert middle[0].item() == middle[-1].item() == pytest.approx(0.2)
    grad_size = token_weights(p, "normalize", 0.01) * (1 - p)
    assert ((grad_size - 1).abs()[p <= 0.9] <= 0.01 / (0.01 + 0.1) + 1e-12).all()  # 1 − α/(1 + α − p)
    assert token_weights(p, "normalize", 0.2)[-1].item() == pytest.approx(1 / 0.2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_normalize_stays_finite_at_p_one_in_low_precision(dtype):
    """1 + α rounds to 1 in bf16 for α < 2^-8; the weight must still be finite (≈ 1/α) at p = 1."""
    log_p = torch.tensor([[0.0, 1e-7, -1e-3, -20.0, float("-inf")]], dtype=dtype)  # exp(1e-7) > 1 in float32
    for alpha in (1e-3, 0.2):
        w = token_weights(log_p.exp(), "normalize", alpha)
        assert torch.isfinite(w).all(), (dtype, alpha, w)
        assert w[0, 0].item() == pytest.approx(1 / alpha, rel=1e-2)
        assert w[0, -1].item() == pytest.approx(1 / (1 + alpha), rel=1e-2)


def test_apply_to_on_a_hand_built_mixed_sign_batch():
    """Rows with Â = +2, −1 and 0; p = 1/2, 1/4, 1 on every row; low_prob with α = 0.2: w = 1.1, 1.15, 1."""
    p = torch.tensor([0.5, 0.25, 1.0], dtype=torch.float64)
    old = p.log().expand(3, 3).clone()
    adv = torch.tensor([[2.0], [-1.0], [0.0]], dtype=torch.float64).expand(3, 3).clone()
    mask = torch.ones(3, 3, dtype=torch.bool)
    mask[2, 2] = False  # one padding token, excluded from the statistics
    weighted = {
        "all": [[2.2, 2.3, 2.0], [-1.1, -1.15, -1.0], [0.0, 0.0, 0.0]],
        "positive": [[2.2, 2.3, 2.0], [-1.0, -1.0, -1.0], [0.0, 0.0, 0.0]],
        "negative": [[2.0, 2.0, 2.0], [-1.1, -1.15, -1.0], [0.0, 0.0, 0.0]],
    }
    # weights applied to the 8 response tokens (the Â = 0 row keeps 1 unless `all`)
    applied = {
        "all": [1.1, 1.15, 1.0, 1.1, 1.15, 1.0, 1.1, 1.15],
        "positive": [1.1, 1.15, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        "negative": [1.0, 1.0, 1.0, 1.1, 1.15, 1.0, 1.0, 1.0],
    }
    for apply_to in APPLY_TO:
        out, stats = reweight_advantages(old, old, adv, mask, "low_prob", 0.2, "old", apply_to)
        assert torch.allclose(out, torch.tensor(weighted[apply_to], dtype=torch.float64), rtol=1e-14), apply_to
        w = applied[apply_to]
        count, p_sum, w_sum, w_min, w_max, n_low, n_kept, bonus_sum = stats.tolist()
        assert count == 8 and p_sum == pytest.approx(3 * 0.5 + 3 * 0.25 + 2 * 1.0)
        assert (w_sum, w_min, w_max) == pytest.approx((sum(w), min(w), max(w)), rel=1e-6), apply_to
        assert n_low == 3  # p = 1/4 on three rows
        assert n_kept == 8 and bonus_sum == 0  # every weight > 0; no entropy bonus


@pytest.mark.parametrize("apply_to", APPLY_TO)
def test_select_by_sign_keeps_dtype_and_leaves_other_tokens_at_one(apply_to):
    g = torch.Generator().manual_seed(0)
    adv = torch.randn(4, 7, generator=g).bfloat16()
    adv[0, 0] = 0
    w = (torch.rand(4, 7, generator=g) + 2).bfloat16()
    out = select_by_sign(w, adv, apply_to)
    assert out.dtype == torch.bfloat16
    keep = {"all": torch.ones_like(adv, dtype=torch.bool), "positive": adv > 0, "negative": adv < 0}[apply_to]
    assert torch.equal(out[keep], w[keep]) and (out[~keep] == 1).all()


@pytest.mark.parametrize("scheme,apply_to", [("normalize", "negative"), ("middle", "positive"), ("none", "positive")])
def test_compiled_weighting_equals_eager_for_new_settings(scheme, apply_to):
    """verl's default use_torch_compile=True compiles the weighting, sign selection included."""
    g = torch.Generator().manual_seed(21)
    old = -torch.rand(5, 13, generator=g) * 4
    cur = (old + 0.3 * torch.randn(5, 13, generator=g)).clamp(max=0)
    adv = torch.randn(5, 1, generator=g).expand(5, 13).clone()
    mask = torch.rand(5, 13, generator=g) < 0.8

    def run(policy_loss, compile, fn=compute_policy_loss_reweight):
        cfg = FSDPActorConfig(use_torch_compile=compile, strategy="fsdp2", rollout_n=1, ppo_mini_batch_size=1,
                              ppo_micro_batch_size_per_gpu=1, policy_loss=policy_loss)
        x = cur.clone().requires_grad_(True)
        loss, metrics = fn(old_log_prob=old, log_prob=x, advantages=adv, response_mask=mask, config=cfg)
        loss.backward()
        return loss.detach(), x.grad, metrics

    policy_loss = ReweightPolicyLossConfig(scheme=scheme, alpha=0.2, apply_to=apply_to)
    eager, fused = run(policy_loss, False), run(policy_loss, True)
    assert torch.allclose(fused[0], eager[0], rtol=1e-6, atol=1e-7)
    assert torch.allclose(fused[1], eager[1], rtol=1e-6, atol=1e-7)
    for key, value in eager[2].items():
        assert fused[2][key] == pytest.approx(value, rel=1e-5), key
    if scheme == "none":  # still verl's loss bit for bit when compiled
        vanilla = run(PolicyLossConfig(), False, compute_policy_loss_vanilla)
        assert torch.equal(fused[0], vanilla[0]) and torch.equal(fused[1], vanilla[1])


@pytest.mark.parametrize(
    "scheme,alpha,apply_to,match",
    [
        ("normalize", 0.0, "all", r"policy_loss\.alpha=0\.0 with actor_rollout_ref\.actor\.policy_loss\.scheme=normalize"),
        ("normalize", 0, "positive", r"policy_loss\.alpha=0 .*normalize"),
        ("middle", math.inf, "all", r"policy_loss\.alpha"),
        ("low_prob", 0.2, "both", r"policy_loss\.apply_to='both'"),
        ("low_prob", 0.2, None, r"policy_loss\.apply_to=None"),
    ],
)
def test_validate_names_the_key(scheme, alpha, apply_to, match):
    with pytest.raises(ValueError, match=match):
        validate(scheme, alpha, "old", apply_to=apply_to, prefix="actor_rollout_ref.actor.policy_loss.")


MODEL = ["actor_rollout_ref.model.path=/models/any"]
KEY = "actor_rollout_ref.actor.policy_loss"


@pytest.mark.parametrize(
    "overrides,match",
    [
        ([f"{KEY}.scheme=normalize", f"{KEY}.alpha=0"], r"policy_loss\.alpha=0\.0 .*scheme=normalize"),
        ([f"{KEY}.apply_to=pos"], r"policy_loss\.apply_to='pos'"),
        ([f"{KEY}.scheme=middle", f"{KEY}.alpha=-1"], r"policy_loss\.alpha"),
    ],
)
def test_preflight_refuses_bad_settings_naming_the_key(overrides, match):
    from reweight.checks import ConfigError
    from reweight.train import compose_config, prepare

    cfg = compose_config("dapo_reweight", MODEL + overrides)
    with pytest.raises(ConfigError, match=match):
        prepare(cfg, dry_run=True)


@pytest.mark.parametrize("scheme,apply_to", [("normalize", "positive"), ("middle", "negative")])
def test_new_settings_reach_our_config_class_without_plus(scheme, apply_to):
    """apply_to is in configs/method/reweight.yaml, so a plain override (no `+`) sets it."""
    from verl.utils.config import omega_conf_to_dataclass

    from reweight.checks import check_config
    from reweight.train import compose_config

    cfg = compose_config("dapo_reweight", MODEL + [f"{KEY}.scheme={scheme}", f"{KEY}.apply_to={apply_to}"])
    check_config(cfg)
    pl = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor.policy_loss)
    assert (pl.scheme, pl.alpha, pl.apply_to) == (scheme, 0.2, apply_to)
    assert compose_config("dapo_reweight", MODEL).actor_rollout_ref.actor.policy_loss.apply_to == "all"


def test_dry_run_cli_refuses_normalize_with_alpha_zero(tmp_path):
    """The embedded default (no --config-name) refuses it before building anything, naming the key."""
    out = subprocess.run(
        [sys.executable, "-m", "reweight.train", "--dry-run", f"{KEY}.scheme=normalize", f"{KEY}.alpha=0",
         f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 2, out.stderr[-3000:]
    (line,) = out.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith(f"reweight-train: error: {KEY}.alpha=0.0 with {KEY}.scheme=normalize: alpha must be > 0"), line
    assert "dry run: config checked" not in out.stdout


def test_plot_script_draws_every_scheme(tmp_path):
    """docs/plot_weights.py (which made the committed docs/weights.png) runs and writes a readable PNG."""
    import importlib.util
    from pathlib import Path

    from PIL import Image

    script = Path(__file__).resolve().parents[1] / "docs" / "plot_weights.py"
    spec = importlib.util.spec_from_file_location("plot_weights", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    p, ws = module.curves(0.2, points=11)
    assert list(ws) == list(PROB_SCHEMES)
    for scheme, w in ws.items():
        assert torch.allclose(w, torch.tensor([closed_form(x, scheme, 0.2) for x in p.tolist()], dtype=torch.float64))
    out = module.plot(0.2, tmp_path / "w.png")
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 800
    with Image.open(script.with_name("weights.png")) as committed:
        assert committed.format == "PNG"
