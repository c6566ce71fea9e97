"""Throughput of the two-model lockstep decoder (on demand; not collected by pytest).

    python tests/benchmarks/bench_decoding.py [--batch 8] [--new-tokens 256] [--threads 1] [--device cpu]

Three measurements on the same two models (randomly initialised Qwen2, hidden 256, 4 layers),
the same batch of left-padded prompts of different lengths and the same number of generated
tokens (stop tokens disabled, so every sequence runs to the limit), one timed run each after a
short warm-up (``--repeats N`` alternates N runs of each and compares medians, for noisy
shared machines where a best-of comparison rewards whichever side caught a quiet moment):

* ``decoder``: :class:`reweight.decoding.TwoModelDecoder` (criterion ``logp_diff``, mode
  ``extrapolate``: both models forward every step, both KV-cached);
* ``hf_generate``: one model's Hugging Face ``generate`` with KV cache (sampling, top-p 0.7);
* ``recompute``: the released method's shape — every token, both models re-run on the whole
  prefix (no cache), then the same criterion / resampling step.

Targets (issue 5): decoder ÷ hf_generate ≥ 0.4 (0.5 is the limit for two equal models);
decoder ÷ recompute ≥ 10.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def build(device: str, hidden: int, layers: int):
    from reweight.tiny import build_model, build_tokenizer

    tok = build_tokenizer()
    kw = dict(hidden_size=hidden, num_layers=layers, num_heads=4, num_kv_heads=2,
              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    base = build_model(len(tok), seed=0, **kw).to(device)
    rl = build_model(len(tok), seed=1, **kw).to(device)
    return tok, base, rl


def make_prompts(tok, batch: int) -> list[list[int]]:
    from reweight.data.synthetic import make_problems

    prompts = []
    for i, p in enumerate(make_problems(batch, seed=0)):
        text = p.prompt + " Show your work." * (i % 4)
        s = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
        prompts.append(tok(s, add_special_tokens=False)["input_ids"])
    return prompts


def left_pad(prompts, pad_id, device):
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    return ids.to(device), mask.to(device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_decoder(tok, base, rl, prompts, new_tokens, device):
    from reweight.decoding import DecodeConfig, TwoModelDecoder

    decoder = TwoModelDecoder(base, rl, tok, stop_token_ids=[])
    cfg = DecodeConfig(criterion="logp_diff", tau=-0.3, mode="extrapolate", gamma=0.1, max_new_tokens=new_tokens)
    decoder.decode(prompts, DecodeConfig(max_new_tokens=8))  # warm-up
    sync(device)
    start = time.perf_counter()
    results = decoder.decode(prompts, cfg, seeds=list(range(len(prompts))))
    sync(device)
    elapsed = time.perf_counter() - start
    generated = sum(r.n_generated for r in results)
    ratio = sum(r.n_replaced for r in results) / generated
    return generated, elapsed, ratio


@torch.inference_mode()
def time_hf_generate(tok, model, prompts, new_tokens, device):
    ids, mask = left_pad(prompts, tok.pad_token_id, device)
    kw = dict(attention_mask=mask, do_sample=True, top_p=0.7, top_k=0, temperature=1.0, pad_token_id=tok.pad_token_id,
              eos_token_id=None, use_cache=True)
    model.generate(ids, max_new_tokens=8, **kw)  # warm-up
    sync(device)
    start = time.perf_counter()
    out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kw)
    sync(device)
    elapsed = time.perf_counter() - start
    return (out.shape[1] - ids.shape[1]) * len(prompts), elapsed


@torch.inference_mode()
def time_recompute(tok, base, rl, prompts, new_tokens, device):
    """Per token: both models on the full (left-padded) prefix, no cache; then the Algorithm 1 step."""
    from reweight.decoding import extrapolate_logprobs, sample_from_logprobs, top_p_logprobs

    V = len(tok)
    ids, mask = left_pad(prompts, tok.pad_token_id, device)
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(new_tokens):
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        lb = torch.log_softmax(base(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False,
                                    logits_to_keep=1).logits[:, -1, :V].float(), -1)
        lr = torch.log_softmax(rl(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False,
                                  logits_to_keep=1).logits[:, -1, :V].float(), -1)
        u = torch.rand(len(prompts), 2, generator=g, dtype=torch.float64).to(device)
        proposed = sample_from_logprobs(top_p_logprobs(lb, 0.7), u[:, 0])
        flagged = (lr - lb).gather(-1, proposed[:, None]).squeeze(-1) <= -0.3
        resampled = sample_from_logprobs(top_p_logprobs(extrapolate_logprobs(lr, lb, 0.1), 0.7), u[:, 1])
        token = torch.where(flagged, resampled, proposed)
        ids = torch.cat([ids, token[:, None]], -1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], -1)
    sync(device)
    return new_tokens * len(prompts), time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-recompute", action="store_true")
    p.add_argument("--repeats", type=int, default=1, help="alternate N timed runs of decoder / generate; compare medians")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    tok, base, rl = build(args.device, args.hidden, args.layers)
    prompts = make_prompts(tok, args.batch)
    runs_dec, runs_hf = [], []
    for _ in range(args.repeats):
        runs_dec.append(time_decoder(tok, base, rl, prompts, args.new_tokens, args.device))
        runs_hf.append(time_hf_generate(tok, base, prompts, args.new_tokens, args.device))
    n_dec, t_dec, ratio = sorted(runs_dec, key=lambda r: r[1])[(len(runs_dec) - 1) // 2]  # median (lower)
    n_hf, t_hf = sorted(runs_hf, key=lambda r: r[1])[(len(runs_hf) - 1) // 2]
    report = dict(
        device=args.device, threads=args.threads, batch=args.batch, new_tokens=args.new_tokens,
        prompt_lengths=[len(x) for x in prompts], hidden=args.hidden, layers=args.layers,
        decoder_tok_s=n_dec / t_dec, hf_generate_tok_s=n_hf / t_hf, replacement_ratio=ratio,
        decoder_over_hf_generate=(n_dec / t_dec) / (n_hf / t_hf),
        runs_s=dict(decoder=[round(r[1], 3) for r in runs_dec], hf_generate=[round(r[1], 3) for r in runs_hf]),
    )
    if not args.skip_recompute:
        n_rc, t_rc = time_recompute(tok, base, rl, prompts, args.new_tokens, args.device)
        report.update(recompute_tok_s=n_rc / t_rc, decoder_over_recompute=(n_dec / t_dec) / (n_rc / t_rc))
    print(json.dumps(report, indent=1))
    print(f"decoder / HF generate: {report['decoder_over_hf_generate']:.2f} (target >= 0.4)")
    if "decoder_over_recompute" in report:
        print(f"decoder / full-prefix recompute: {report['decoder_over_recompute']:.1f}x (target >= 10)")


if __name__ == "__main__":
    main()
