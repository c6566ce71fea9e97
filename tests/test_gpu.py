"""GPU-only checks (``@pytest.mark.gpu``; skipped without CUDA, see tests/conftest.py): our loss and the
decoder on CUDA against CPU references, and the GPU smoke run (configs/gpu_smoke.yaml) end to end.

The analysis kernels' GPU tests live with their CPU ones in tests/test_analysis_metrics.py. The loss and
decoder tests need torch and transformers only (the loss module imports verl's core_algos itself; nothing
here starts Ray). Run them all on a GPU machine with ``launch/gpu_checks.sh`` (docs/gpu.md).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import TEST_DEVICE, needs_real_cuda
from test_loss import actor_config, loss_and_grad, make_batch, reference_loss

from reweight.loss import ReweightPolicyLossConfig, compute_policy_loss_reweight

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_loss_on_cuda_matches_the_float64_cpu_reference(compiled, dtype):
    """The reweighted loss and its gradient on CUDA (eager, and verl's default torch.compile path) against
    the float64 closed form on CPU, on a batch long enough for real kernels (64 x 2048 tokens)."""
    alpha = 0.2
    old, cur, adv, mask = make_batch(batch=64, length=2048, dtype=torch.float64, seed=21)
    old, cur, adv = (t.to(dtype).double() for t in (old, cur, adv))  # the reference sees the same rounded inputs
    x = cur.clone().requires_grad_(True)
    ref = reference_loss(old, x, adv, mask, alpha)
    ref.backward()
    cfg = actor_config(ReweightPolicyLossConfig(scheme="low_prob", alpha=alpha), compile=compiled)
    on = lambda t: t.to(TEST_DEVICE, dtype)  # noqa: E731
    loss, grad, metrics = loss_and_grad(compute_policy_loss_reweight, on(old), on(cur), on(adv), mask.to(TEST_DEVICE), cfg)
    assert loss.device.type == TEST_DEVICE and loss.dtype == dtype
    # per-token gradients are ~1/N: compare them relative to their scale
    got, want = grad.double().cpu() / x.grad.abs().max(), x.grad / x.grad.abs().max()
    if dtype == torch.float32:
        torch.testing.assert_close(loss.double().cpu(), ref.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    else:
        # bf16 ratios (8 bits of mantissa) put a few tokens on the other side of a clip boundary, where the
        # gradient jumps (the same code on CPU: 0.2% of tokens); every other token agrees to bf16 resolution
        torch.testing.assert_close(loss.double().cpu(), ref.detach(), rtol=2e-2, atol=2e-3)
        close = (got - want).abs() <= 2e-3 + 2e-2 * want.abs()
        assert close.double().mean() > 0.99, close.double().mean()
        assert torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.99  # 0.997 on CPU
    want_w = (1 + alpha * (1 - old.exp()))[mask]
    assert metrics["actor/reweight/weight_mean"] == pytest.approx(want_w.mean().item(), rel=1e-2)


@pytest.fixture(scope="module")
def decoder_pair(tiny_tokenizer):
    """The tiny pair with final-norm gains raised 4x, as in test_decoding.py: unscaled, randomly initialised
    models are almost uniform (every log-prob ≈ −log V), so no tolerance could tell a right distribution
    from one of the wrong position; scaled, log-probs span several nats."""
    from reweight.tiny import build_model

    tok = tiny_tokenizer
    kw = dict(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    base, rl = build_model(len(tok), seed=0, **kw), build_model(len(tok), seed=1, **kw)
    with torch.no_grad():
        for model in (base, rl):
            model.model.norm.weight.mul_(4.0)
    prompts = [tok(t)["input_ids"] for t in ("12+7=", "3*4 = ", "what is 100-1?")]
    return tok, base, rl, prompts


# (largest, mean) |Δ log π| of a KV-cached decode against full-prefix fp32 forwards on CPU, over every
# distribution of the decode below. Measured with REWEIGHT_TEST_DEVICE=cpu (conftest.py) on the 4x-gain pair:
# fp32 1.1e-6 / 1.4e-7 (rounding); bf16 1.9e-2 / 2.9e-3 (its 8-bit mantissa). Bugs planted and measured the same
# way: a cache position off by one (RoPE) 1.2e-2 / 1.3e-3 in fp32, which the fp32 bound fails 100x over (in bf16
# it hides under bf16's own error, so the fp32 case is the one that guards positions); the log-softmax taken in
# bf16 instead of fp32, 5.7e-2 / 9.2e-3, which both bf16 bounds fail.
DECODER_TOL = {torch.float32: (1e-4, 1e-5), torch.bfloat16: (4e-2, 6e-3)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_decoder_on_cuda_matches_full_prefix_cpu_forwards(decoder_pair, dtype):
    """Selective replacement decoded on CUDA with the KV cache: every step's base and RL next-token
    distributions equal a cache-free float32 forward of the whole prefix on CPU."""
    import copy

    from reweight.decoding import DecodeConfig, TwoModelDecoder

    tok, base, rl, prompts = decoder_pair
    V = len(tok)
    cfg = DecodeConfig(max_new_tokens=12, top_p=0.9, criterion="all", temperature=1.0)
    gpu_base, gpu_rl = (copy.deepcopy(m).to(TEST_DEVICE, dtype) for m in (base, rl))
    steps = []
    results = TwoModelDecoder(gpu_base, gpu_rl, tok, stop_token_ids=[]).decode(prompts, cfg, seeds=[1, 2, 3],
                                                                                 on_step=steps.append)
    tol_max, tol_mean = DECODER_TOL[dtype]
    checked, worst, total = 0, 0.0, 0.0
    for info in steps:
        for pos, row in enumerate(info.rows.tolist()):
            prefix = prompts[row] + results[row].tokens[: info.step]
            for model, got in ((base, info.logp_base[pos]), (rl, info.logp_rl[pos])):
                with torch.no_grad():
                    logits = model(input_ids=torch.tensor([prefix])).logits[0, -1, :V].float()
                e = (got.float().cpu() - torch.log_softmax(logits, -1)).abs()
                worst, total = max(worst, e.max().item()), total + e.mean().item()
                checked += 1
    print(f"decoder {dtype}: |Δ log π| largest {worst:.2e}, mean {total / checked:.2e} over {checked} distributions")
    assert worst <= tol_max and total / checked <= tol_mean, (worst, total / checked)
    assert checked == 2 * sum(r.n_generated for r in results) > 0


def test_gpu_smoke_run_trains_two_dapo_steps_with_our_loss(e2e_assets, tmp_path):
    """configs/gpu_smoke.yaml end to end on one GPU: vLLM rollout, CUDA FSDP2 actor, sdpa, our loss."""
    needs_real_cuda()
    from conftest import e2e_asset_overrides

    metrics = tmp_path / "metrics.jsonl"
    cmd = [sys.executable, "-m", "reweight.train", "--config-name", "gpu_smoke", *e2e_asset_overrides(e2e_assets),
           f"trainer.default_local_dir={tmp_path / 'ckpt'}", "trainer.logger=[console,file]",
           f"+ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH={metrics}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=tmp_path)
    (tmp_path / "log.txt").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    steps = {r["step"]: r["data"] for r in map(json.loads, metrics.read_text().splitlines()) if "actor/pg_loss" in r["data"]}
    assert sorted(steps) == [1, 2]
    for data in steps.values():
        assert data["actor/reweight/weight_min"] >= 1.0 and data["actor/reweight/weight_max"] <= 1.2 + 1e-6
    assert (tmp_path / "ckpt" / "global_step_2").is_dir()
