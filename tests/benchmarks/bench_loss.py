"""Forward + backward time of the ``reweight`` loss ÷ verl's ``vanilla`` loss on the same inputs.

    python tests/benchmarks/bench_loss.py                       # CPU, fp32, 64 x 8192, 30 reps
    python tests/benchmarks/bench_loss.py --device cuda --dtype bfloat16
    python tests/benchmarks/bench_loss.py --scheme forking --unit-mean   # also entropy_bonus, low_prob --unit-mean

Repetitions of the losses are interleaved in one run, the order rotated every round (ABC, BCA, CAB, ...)
so that neither drift in machine load nor the position in a round favours one; ratios of medians and the
median of the per-round ratios are printed, with the device and torch version. Targets: <= 1.00 for verl's
default (actor.use_torch_compile, under which the weighting and the clipped surrogate are one compiled
function, forward and backward), <= 1.05 eager (use_torch_compile=False). For the entropy schemes and
``--unit-mean`` the loss gets synthetic entropies, τ_ρ and scale (what the actor hook gives it; the hook's
own per-mini-batch work is outside this timing), and the compiled and eager losses are checked to agree.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla
from verl.workers.config import FSDPActorConfig, PolicyLossConfig

from reweight.loss import ReweightPolicyLossConfig, compute_policy_loss_reweight, local_weight_sum, settings
from reweight.loss_inputs import LossInputs, loss_inputs
from reweight.weights import top_fraction_threshold
from _device import describe_device  # tests/benchmarks/_device.py (run as a script: this folder is on sys.path)


def config(policy_loss, use_torch_compile: bool = True) -> FSDPActorConfig:
    cfg = FSDPActorConfig(
        use_torch_compile=use_torch_compile,
        strategy="fsdp2", rollout_n=1, ppo_mini_batch_size=1, ppo_micro_batch_size_per_gpu=1,
        clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=10.0, policy_loss=policy_loss,
    )
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--length", type=int, default=8192)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--scheme", default="low_prob")
    ap.add_argument("--alpha", type=float, default=0.2)
    ap.add_argument("--unit-mean", action="store_true", help="rescale the weights to mean 1 (unit_mean=true)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype, device = getattr(torch, args.dtype), torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    g = torch.Generator().manual_seed(0)
    shape = (args.batch, args.length)
    old = (-torch.rand(shape, generator=g) * 4).to(device, dtype)
    cur = (old.float() + 0.3 * torch.randn(shape, generator=g).to(device)).clamp(max=0).to(dtype)
    adv = torch.randn(args.batch, 1, generator=g).expand(shape).contiguous().to(device, dtype)
    lengths = torch.randint(args.length // 4, args.length + 1, (args.batch,), generator=g)
    mask = (torch.arange(args.length)[None, :] < lengths[:, None]).to(device)

    policy_loss = ReweightPolicyLossConfig(scheme=args.scheme, alpha=args.alpha, unit_mean=args.unit_mean)
    cases = {
        "vanilla": (compute_policy_loss_vanilla, config(PolicyLossConfig())),
        # verl's default actor.use_torch_compile=True: weighting and surrogate compiled together
        "reweight": (compute_policy_loss_reweight, config(policy_loss)),
        "reweight_eager": (compute_policy_loss_reweight, config(policy_loss, use_torch_compile=False)),
    }
    # What the actor hook would set: entropies, the global τ_ρ and unit_mean's scale.
    entropy = (torch.rand(shape, generator=g) * 3).to(device, dtype)
    s = settings(cases["reweight"][1])
    tau = top_fraction_threshold(entropy[mask].float(), s.alpha).item() if s.scheme == "forking" else None
    w_sum, count = local_weight_sum(old, adv, mask, s, entropy, tau).tolist() if s.unit_mean else (1.0, 1.0)
    inputs = LossInputs(entropy, tau, count / w_sum)

    def once(fn, cfg) -> float:
        x = cur.detach().clone().requires_grad_(True)
        sync()
        t0 = time.perf_counter()
        with loss_inputs(inputs):
            loss, _ = fn(old_log_prob=old, log_prob=x, advantages=adv, response_mask=mask,
                         loss_agg_mode="token-mean", config=cfg)
        loss.backward()
        sync()
        return time.perf_counter() - t0

    def value(name: str) -> torch.Tensor:
        fn, cfg = cases[name]
        with loss_inputs(inputs):
            return fn(old_log_prob=old, log_prob=cur, advantages=adv, response_mask=mask, loss_agg_mode="token-mean",
                      config=cfg)[0].float()

    compiled, eager = value("reweight"), value("reweight_eager")
    assert torch.allclose(compiled, eager, rtol=1e-4, atol=1e-6), (compiled.item(), eager.item())

    for fn, cfg in cases.values():  # warm-up
        for _ in range(3):
            once(fn, cfg)
    times: dict[str, list[float]] = {k: [] for k in cases}
    names = list(cases)
    for rep in range(args.reps):
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            fn, cfg = cases[name]
            times[name].append(once(fn, cfg))
    med = {k: statistics.median(v) for k, v in times.items()}

    def paired(name: str) -> float:
        return statistics.median(a / b for a, b in zip(times[name], times["vanilla"]))

    print(f"device: {describe_device(device)}; torch {torch.__version__}; {args.batch}x{args.length} {args.dtype}; "
          f"scheme={args.scheme} alpha={args.alpha} unit_mean={args.unit_mean}; {args.reps} interleaved rounds, "
          f"order rotated; compiled loss {compiled.item():.6g} = eager {eager.item():.6g}")
    for k, v in med.items():
        print(f"  {k:14s} forward+backward: {v * 1e3:8.2f} ms (median)")
    print(f"ratio reweight / vanilla (actor.use_torch_compile=True): {med['reweight'] / med['vanilla']:.3f} "
          f"(median of per-round ratios {paired('reweight'):.3f}; target <= 1.00)")
    print(f"ratio reweight_eager / vanilla (actor.use_torch_compile=False): {med['reweight_eager'] / med['vanilla']:.3f} "
          f"(median of per-round ratios {paired('reweight_eager'):.3f}; target <= 1.05)")


if __name__ == "__main__":
    main()
