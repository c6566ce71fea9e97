"""``reweight-decode``: selective replacement / extrapolation decoding and τ–γ sweeps.

Examples::

    # one setting: Δlog p ≤ −0.3 replaced by π_Extra with γ = 0.1, 4 samples per prompt
    reweight-decode generate --base Qwen/Qwen2.5-32B --rl <dapo-32b> --data aime24.parquet \\
        --criterion logp_diff --tau -0.3 --mode extrapolate --gamma 0.1 --n 4 --out gen.jsonl

    # Fig. 1(c) + Fig. 4: τ grids per criterion, replace vs RL vs extrapolate
    reweight-decode sweep --base <base> --rl <rl> --data aime24.parquet --out sweep/ --n 8 \\
        --grid logp_diff=-1,-0.5,-0.3,-0.1 --grid entropy=2,1,0.5 --grid kl=0.5,0.2,0.1 \\
        --grid random=0.05,0.1,0.2 --extrapolate-tau -0.3 --gammas 0.05,0.1 --global-gammas 0.1

Criteria (a flagged base proposal y_t is resampled): logp_diff Δlog p(y_t) ≤ τ; entropy
H(π_Base) ≥ τ; rl_entropy H(π_RL) ≥ τ; kl KL(π_RL‖π_Base) ≥ τ; kl_reverse KL(π_Base‖π_RL) ≥ τ;
random u < τ; none; all. All on the full-vocabulary distributions at the sampling temperature
(before top-p). Modes: replace (flagged → π_RL), extrapolate (flagged → π_Extra ∝ π_RL·exp(γ Δlog p)),
global (every token from π_Extra). Sampling: temperature 1.0, top-p 0.7 (the paper's) by default.

sweep writes <out>/points/<setting>.json and .samples.jsonl per finished grid point (a rerun
skips them), results.csv / results.json, fig1c_accuracy_vs_ratio.png and fig4_extrapolation.png.
Every argument is validated (criterion, mode, τ, γ, tokenizers, dataset columns) before a model
is loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from reweight.decoding.criteria import CRITERIA
from reweight.decoding.decoder import MODES, DecodeConfig, TwoModelDecoder
from reweight.models import DTYPE_CHOICES, load_model, load_shared_tokenizer


def _floats(text: str, what: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a comma-separated list of numbers") from None
    if not values:
        raise ValueError(f"{what}: empty list")
    return values


def _parse_grids(items: Sequence[str] | None) -> dict[str, list[float]] | None:
    if not items:
        return None
    grids: dict[str, list[float]] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--grid {item!r}: expected CRITERION=tau1,tau2,...")
        name, values = item.split("=", 1)
        name = name.strip()
        if name not in CRITERIA or name in ("none", "all"):
            raise ValueError(f"--grid {item!r}: unknown criterion {name!r}; choose from "
                             f"{', '.join(c for c in CRITERIA if c not in ('none', 'all'))}")
        grids[name] = _floats(values, f"--grid {name}")
    return grids


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, help="base model: HF hub id, HF directory or verl checkpoint dir")
    p.add_argument("--rl", required=True, help="RL model: HF hub id, HF directory or verl checkpoint dir; same tokenizer as --base")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=0.7)
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--n", type=int, default=1, help="samples per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16, help="sequences decoded together")
    p.add_argument("--limit", type=int, default=None, help="use only the first N prompts of --data")
    p.add_argument("--no-chat-template", action="store_true", help="feed prompt text without the chat template")
    p.add_argument("--device", default="auto", help="torch device (auto: cuda if available, else cpu)")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help="weights dtype (auto: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--stop-token-ids", default=None,
                   help="comma-separated stop tokens (default: EOS of the tokenizer and both models' configs)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reweight-decode", description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="decode one setting and write per-sequence records (JSON lines)")
    _common(g)
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help=".parquet (verl schema) or .jsonl with prompt and ground truth")
    src.add_argument("--prompt", action="append", help="a user message (repeatable)")
    g.add_argument("--criterion", default=None, choices=CRITERIA, help="default logp_diff (all in mode global)")
    g.add_argument("--tau", type=float, default=0.0)
    g.add_argument("--mode", default="replace", choices=MODES)
    g.add_argument("--gamma", type=float, default=0.0)
    g.add_argument("--out", required=True, help="output .jsonl")

    s = sub.add_parser("sweep", help="τ grid per criterion + Fig. 4 settings; table and plots")
    _common(s)
    s.set_defaults(n=4)
    s.add_argument("--data", required=True, help=".parquet (verl schema) or .jsonl with prompt and ground truth")
    s.add_argument("--grid", action="append", metavar="CRITERION=TAUS",
                   help="τ values of one criterion, e.g. logp_diff=-1,-0.5,-0.3 (repeatable; default grids otherwise)")
    s.add_argument("--extrapolate-tau", type=float, default=None, help="logp_diff τ of the Fig. 4 comparison")
    s.add_argument("--gammas", default=None, help="comma-separated γ for selective extrapolation at --extrapolate-tau")
    s.add_argument("--global-gammas", default=None, help="comma-separated γ for global extrapolation (RL proposes)")
    s.add_argument("--out", required=True, help="output directory (resumed if it exists)")
    return parser


def _load_tokenizers(base: str, rl: str):
    tok_base = load_shared_tokenizer(base, rl, base_name=f"--base {base}", rl_name=f"--rl {rl}")
    if tok_base.pad_token_id is None:
        tok_base.pad_token = tok_base.eos_token
    tok_base.padding_side = "left"
    return tok_base


def _load_decoder(args, tokenizer) -> TwoModelDecoder:
    models = [load_model(path, args.device, args.dtype, attn_implementation="sdpa") for path in (args.base, args.rl)]
    stops = [int(x) for x in args.stop_token_ids.split(",")] if args.stop_token_ids else None
    return TwoModelDecoder(models[0], models[1], tokenizer, stop_token_ids=stops)


def _load_data(args, tokenizer):
    from reweight.decoding.data import EvalPrompt, encode_prompt, load_prompts

    if getattr(args, "data", None):
        prompts = load_prompts(args.data, limit=args.limit)
    else:
        prompts = [EvalPrompt((("user", text),), "", None) for text in args.prompt]
    ids = [encode_prompt(tokenizer, p, use_chat_template=not args.no_chat_template) for p in prompts]
    return prompts, ids


def _check_common(args) -> None:
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")


def cmd_generate(args) -> int:
    from reweight.decoding.sweep import generate

    _check_common(args)
    config = DecodeConfig(criterion=args.criterion, tau=args.tau, mode=args.mode, gamma=args.gamma,
                          temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens)
    tokenizer = _load_tokenizers(args.base, args.rl)
    prompts, ids = _load_data(args, tokenizer)
    decoder = _load_decoder(args, tokenizer)
    summary = generate(decoder, prompts, ids, config, args.out, n_samples=args.n, seed=args.seed,
                       batch_size=args.batch_size, progress=not args.no_progress)
    print(json.dumps(summary))
    return 0


def cmd_sweep(args) -> int:
    from reweight.decoding.sweep import DEFAULT_GRIDS, SweepSpec, run_sweep

    _check_common(args)
    spec = SweepSpec(
        grids=_parse_grids(args.grid) or dict(DEFAULT_GRIDS),
        extrapolate_tau=args.extrapolate_tau,
        gammas=_floats(args.gammas, "--gammas") if args.gammas else (),
        global_gammas=_floats(args.global_gammas, "--global-gammas") if args.global_gammas else (),
        n_samples=args.n, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
        seed=args.seed, batch_size=args.batch_size,
    )
    spec.points()  # validate every setting before loading anything
    tokenizer = _load_tokenizers(args.base, args.rl)
    prompts, ids = _load_data(args, tokenizer)
    decoder = _load_decoder(args, tokenizer)
    run_info = dict(base=str(args.base), rl=str(args.rl), dtype=str(next(decoder.base_model.parameters()).dtype),
                    chat_template=not args.no_chat_template)
    rows = run_sweep(decoder, prompts, ids, spec, args.out, run_info=run_info, progress=not args.no_progress)
    for r in rows:
        print(f"{r['key']:<40} acc={r['accuracy']:.4f} ratio={r['replacement_ratio']:.4f}")
    print(f"wrote {Path(args.out) / 'results.csv'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from reweight.checks import check_model_path
    from reweight.cli_errors import run_cli
    from reweight.file_checks import require_output

    args = build_parser().parse_args(argv)

    def body() -> int:
        check_model_path(args.base, "--base")  # a missing path is refused here, not by the hub client
        check_model_path(args.rl, "--rl")
        require_output(args.out, "--out", "file" if args.command == "generate" else "dir")  # before the models load
        return cmd_generate(args) if args.command == "generate" else cmd_sweep(args)

    return run_cli("reweight-decode", body)


if __name__ == "__main__":
    sys.exit(main())
