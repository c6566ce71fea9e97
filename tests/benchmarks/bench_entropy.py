"""What ``scheme=entropy_bonus`` costs: the update's LM head forward + backward with verl's entropy on ÷ off.

    python tests/benchmarks/bench_entropy.py                      # CPU: 512 tokens, hidden 896, vocab 151936
    python tests/benchmarks/bench_entropy.py --device cuda --tokens 8192 --hidden 3584

verl computes a token's entropy from the full logits (``verl.utils.torch_functional.entropy_from_logits``:
a softmax over the vocabulary) only when ``calculate_entropy`` is on; the reweight actor hook turns it on
for the update of ``entropy_bonus`` only (``forking`` reads the entropy verl's log-prob pass computes
anyway; no other scheme computes any). This times the part of the update that the switch changes:
hidden states → logits (the LM head) → log-probs of the sampled tokens [→ entropy, detached, as the hook
uses it] → a policy-gradient loss → backward into the head and the hidden states. The transformer body
is not included, so the ratio is an upper bound on what a whole update step pays. Repetitions alternate
the two cases (order rotated each round); ratios of medians and the median of per-round ratios are
printed with the device.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from verl.utils.torch_functional import entropy_from_logits, logprobs_from_logits

from _device import describe_device  # tests/benchmarks/_device.py (run as a script: this folder is on sys.path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=896)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    g = torch.Generator().manual_seed(0)
    hidden = (torch.randn(args.tokens, args.hidden, generator=g) * 0.5).to(device, dtype)
    head = (torch.randn(args.vocab, args.hidden, generator=g) / args.hidden**0.5).to(device, dtype)
    labels = torch.randint(0, args.vocab, (args.tokens,), generator=g).to(device)
    adv = torch.randn(args.tokens, generator=g).to(device, dtype)

    def once(with_entropy: bool) -> float:
        h = hidden.detach().clone().requires_grad_(True)
        w = head.detach().clone().requires_grad_(True)
        sync()
        t0 = time.perf_counter()
        logits = h @ w.T
        log_probs = logprobs_from_logits(logits, labels)
        if with_entropy:
            entropy = entropy_from_logits(logits).detach()
            bonus = torch.minimum(0.4 * entropy, adv.abs() / 2)
            loss = -((adv + bonus) * log_probs).mean()
        else:
            loss = -(adv * log_probs).mean()
        loss.backward()
        sync()
        return time.perf_counter() - t0

    for flag in (False, True):
        once(flag)
    times: dict[bool, list[float]] = {False: [], True: []}
    for rep in range(args.reps):
        for flag in ((False, True) if rep % 2 == 0 else (True, False)):
            times[flag].append(once(flag))
    off, on = statistics.median(times[False]), statistics.median(times[True])
    per_round = statistics.median(a / b for a, b in zip(times[True], times[False]))
    print(f"device: {describe_device(device)}; torch {torch.__version__}; {args.tokens} tokens x vocab {args.vocab}, "
          f"hidden {args.hidden}, {args.dtype}; {args.reps} interleaved rounds")
    print(f"  LM head fwd+bwd, entropy off: {off * 1e3:9.1f} ms (median)")
    print(f"  LM head fwd+bwd, entropy on:  {on * 1e3:9.1f} ms (median)")
    print(f"ratio entropy on / off: {on / off:.3f} (median of per-round ratios {per_round:.3f})")


if __name__ == "__main__":
    main()
