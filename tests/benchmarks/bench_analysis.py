"""Benchmark of ``reweight.analysis.token_metrics`` (run on demand; not collected by pytest).

    python tests/benchmarks/bench_analysis.py                       # CPU-sized defaults
    python tests/benchmarks/bench_analysis.py --hidden 2048 --layers 8 --vocab 151936 --seq 4096   # on a GPU

Measures, on one batch and in one run (repeats interleaved, medians reported):

* ``plain``: two teacher-forced forwards, ``model(input_ids).logits`` for the base and the RL model – the
  floor of the work (it computes the logits but no softmax, entropy or KL);
* ``chunked``: :func:`token_metrics` (all seven metrics, exact, full vocabulary), its default path: the
  per-chunk metrics compiled (``torch.compile``) where a compiler is available;
* ``chunked_eager``: the same with ``compiled=False``, the path taken without a compiler (``--skip-eager`` drops it);
* ``naive``: full materialisation – both models' ``(batch, seq, vocab)`` fp32 log-softmax, then the metrics.

Reports tokens/s for each, the ratios chunked ÷ plain and chunked_eager ÷ plain (throughput; target ≥ 0.8),
peak memory of chunked vs naive (target ≤ 1/20 at scale), the one-off compile time (the first call), and the
device (CPU model and threads, or the CUDA device) with the torch version.
Models are random Qwen2 architectures from :func:`reweight.tiny.build_model` (speed does not depend on weights).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from reweight.analysis import token_metrics
from _device import describe_device  # tests/benchmarks/_device.py (run as a script: this folder is on sys.path)
from reweight.analysis.memory import peak_allocated_bytes
from reweight.tiny import build_model


@torch.no_grad()
def plain_forwards(base, rl, ids):
    return base(input_ids=ids).logits, rl(input_ids=ids).logits


@torch.no_grad()
def naive_metrics(base, rl, ids, resp, temperature=1.0):
    """Full (batch, seq, vocab) fp32 log-probs of both models, then every metric at once."""
    lb = torch.log_softmax(base(input_ids=ids).logits.float() / temperature, -1)[:, :-1]
    lr = torch.log_softmax(rl(input_ids=ids).logits.float() / temperature, -1)[:, :-1]
    pb, pr = lb.exp(), lr.exp()
    tgt = ids[:, 1:].unsqueeze(-1)
    out = {
        "logp_base": lb.gather(-1, tgt).squeeze(-1),
        "logp_rl": lr.gather(-1, tgt).squeeze(-1),
        "entropy_base": -(pb * lb).sum(-1),
        "entropy_rl": -(pr * lr).sum(-1),
        "kl_rl_base": (pr * (lr - lb)).sum(-1),
        "kl_base_rl": (pb * (lb - lr)).sum(-1),
    }
    out["delta_logp"] = out["logp_rl"] - out["logp_base"]
    return {k: v * resp[:, 1:] for k, v in out.items()}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=1024, help="prompt + response tokens per sequence")
    p.add_argument("--prompt", type=int, default=64, help="prompt tokens (not scored)")
    p.add_argument("--chunk-size", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-naive", action="store_true", help="when the naive version would not fit in memory")
    p.add_argument("--skip-eager", action="store_true", help="do not time the eager (compiled=False) path")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="model weights (auto: bfloat16 on CUDA, float32 on CPU)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        dtype = getattr(torch, args.dtype)
    kw = dict(hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads, num_kv_heads=max(1, args.heads // 4),
              max_position_embeddings=max(4096, args.seq), dtype=dtype)  # fmt: skip
    base = build_model(args.vocab, seed=0, **kw).to(device)
    rl = build_model(args.vocab, seed=1, **kw).to(device)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g).to(device)
    attn = torch.ones_like(ids)
    resp = torch.zeros_like(ids)
    resp[:, args.prompt :] = 1

    def chunked(compiled):
        return lambda: token_metrics(
            base, rl, input_ids=ids, attention_mask=attn, response_mask=resp, chunk_size=args.chunk_size, compiled=compiled
        )

    runs = {"plain": lambda: plain_forwards(base, rl, ids), "chunked": chunked(None)}
    if not args.skip_eager:
        runs["chunked_eager"] = chunked(False)
    if not args.skip_naive:
        runs["naive"] = lambda: naive_metrics(base, rl, ids, resp)
    first_call_s = {k: timed(fn, device) for k, fn in runs.items()}  # warm-up; includes compiling
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):  # interleaved, so load drift hits every variant alike
        for k, fn in runs.items():
            times[k].append(timed(fn, device))
    tokens = args.batch * args.seq
    med = {k: statistics.median(v) for k, v in times.items()}
    peaks = {k: peak_allocated_bytes(fn, device)[1] for k, fn in runs.items()}
    if "naive" in runs:  # the two compute the same values
        a, b = runs["chunked"](), runs["naive"]()
        err = max((a[k][:, 1:] - b[k].float()).abs().max().item() for k in b)
    result = {
        "device": describe_device(device),
        "torch": torch.__version__,
        "config": {k: getattr(args, k) for k in ("hidden", "layers", "heads", "vocab", "batch", "seq", "prompt", "chunk_size")},
        "dtype": str(dtype),
        "repeats": args.repeats,
        "first_call_s": first_call_s,
        "median_s": med,
        "tokens_per_s": {k: tokens / v for k, v in med.items()},
        "chunked_over_plain": med["plain"] / med["chunked"],
        "peak_mb": {k: v / 2**20 for k, v in peaks.items()},
    }
    if "chunked_eager" in runs:
        result["chunked_eager_over_plain"] = med["plain"] / med["chunked_eager"]
    if "naive" in runs:
        result["chunked_speedup_over_naive"] = med["naive"] / med["chunked"]
        result["naive_over_chunked_peak"] = peaks["naive"] / max(1, peaks["chunked"])
        result["max_abs_diff_chunked_vs_naive"] = err
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
