"""``reweight-eval``: sample and score, score a file of responses, support metrics, report.

    reweight-eval sample  --model CKPT --data aime24.parquet --out runs/rl.jsonl --n 32 \\
                          --temperature 1.0 --top-p 0.7 --max-new-tokens 4096 [--backend vllm]
    reweight-eval score   --responses decode_out.jsonl --out runs/reweighted.jsonl [--data aime24.parquet]
    reweight-eval support --base-model B --rl-model R --base-results runs/base.jsonl \\
                          --rl-results runs/rl.jsonl --out runs/support.json
    reweight-eval report  --results base=runs/base.jsonl --results rl=runs/rl.jsonl \\
                          --results reweighted=runs/reweighted.jsonl [--support runs/support.json] \\
                          --out-dir runs/report

Every subcommand checks its inputs (files, keys, k ≤ n, resume settings) before loading a model.
``sample``, ``score`` and ``support`` are resumable: rerun the same command after an interruption.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from reweight.evaluation.records import (
    DEFAULT_DATA_SOURCE_KEY,
    DEFAULT_PROMPT_KEY,
    AppendLog,
    EvalInputError,
    ResultsWriter,
    load_problems,
    read_results,
)
from reweight.io import write_text_atomic

DTYPES = ("auto", "float32", "bfloat16", "float16")


def _dataset_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--data", required=required, help="dataset (.parquet/.jsonl/.json, verl schema)")
    p.add_argument("--prompt-key", default=DEFAULT_PROMPT_KEY, help="prompt column (chat list or string)")
    p.add_argument("--answer-key", default=None, help="ground-truth column, dotted (default: reward_model.ground_truth, ground_truth, answer, solution)")
    p.add_argument("--data-source-key", default=DEFAULT_DATA_SOURCE_KEY, help="column naming the benchmark / checker")
    p.add_argument("--data-source", default=None, help="data source for rows without one (selects the checker)")
    p.add_argument("--limit", type=int, default=None, help="only the first N problems")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default="auto", choices=DTYPES)
    p.add_argument("--no-chat-template", action="store_true", help="feed prompts without the chat template")
    p.add_argument("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reweight-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sample", help="sample n responses per problem from a model and score them")
    s.add_argument("--model", required=True, help="HF checkpoint directory or name")
    _dataset_args(s, required=True)
    s.add_argument("--out", required=True, help="results file (.jsonl); resumed when it exists")
    s.add_argument("--n", type=int, default=32, help="samples per problem")
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--top-p", type=float, default=1.0)
    s.add_argument("--max-new-tokens", type=int, default=1024)
    s.add_argument("--batch-size", type=int, default=64, help="sequences per generate call (hf)")
    s.add_argument("--problems-per-batch", type=int, default=None, help="problems per resumable unit (default: hf max(1, batch_size // n); vllm 64)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--backend", choices=("hf", "vllm"), default="hf")
    s.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm only")
    s.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vllm only")
    _model_args(s)

    f = sub.add_parser("score", help="score a file of responses (e.g. reweight-decode output)")
    f.add_argument("--responses", required=True, help="responses file (.jsonl/.parquet/.json)")
    f.add_argument("--out", required=True, help="results file (.jsonl); resumed when it exists")
    _dataset_args(f, required=False)
    f.add_argument("--response-key", default=None, help="response column (list per problem, or one string per row)")
    f.add_argument("--group-key", default=None, help="problem-id column (one response per row); a dataset row index or uid")
    f.add_argument("--no-progress", action="store_true")

    u = sub.add_parser("support", help="Invisible Leash support / entropy metrics of a base and an RL model")
    u.add_argument("--base-model", required=True)
    u.add_argument("--rl-model", required=True)
    u.add_argument("--base-results", required=True, help="results file of the base model (reweight-eval sample/score)")
    u.add_argument("--rl-results", required=True, help="results file of the RL model")
    u.add_argument("--out", required=True, help="support JSON; per-problem rows are kept in OUT.rows.jsonl for resuming")
    u.add_argument("--k", type=int, default=None, help="samples defining ε = -ln(ζ)/k (default: n)")
    u.add_argument("--zeta", type=float, default=0.05)
    u.add_argument("--epsilon", type=float, default=None, help="override ε")
    u.add_argument("--batch-size", type=int, default=8, help="sequences per teacher-forced forward")
    u.add_argument("--no-token-entropy", action="store_true", help="skip scoring every sample for token entropy")
    _model_args(u)

    r = sub.add_parser("report", help="avg@n / pass@k tables (markdown, JSON) and pass@k curves")
    r.add_argument("--results", action="append", required=True, metavar="LABEL=PATH", help="results file of one model; repeat")
    r.add_argument("--out-dir", required=True)
    r.add_argument("--k", type=int, nargs="+", default=None, help="pass@k values (default: 1, 2, 4, ..., n)")
    r.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (0: no intervals)")
    r.add_argument("--confidence", type=float, default=0.95)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--support", default=None, help="support JSON from `reweight-eval support`")
    r.add_argument("--no-plot", action="store_true")
    return parser


# ---------------------------------------------------------------------------------------------- helpers


def _device(name: str | None) -> str:
    import torch

    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def load_model(path: str, device: str, dtype: str = "auto"):
    """An HF causal LM in eval mode on ``device`` (dtype "auto": the checkpoint's, float32 on CPU)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype: Any
    if dtype == "auto":
        torch_dtype = torch.float32 if device == "cpu" else "auto"
    else:
        torch_dtype = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    return model.to(device).eval()


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _check_exists(path: str, what: str) -> None:
    if not Path(path).exists():
        raise FileNotFoundError(f"{what} {path!r} does not exist")


# ---------------------------------------------------------------------------------------------- commands


def cmd_sample(args: argparse.Namespace) -> int:
    from reweight.evaluation.sampling import HFSampler, SamplingConfig, VLLMSampler, sample_dataset

    config = SamplingConfig(args.n, args.temperature, args.top_p, args.max_new_tokens, args.batch_size, args.seed)
    problems = load_problems(args.data, args.prompt_key, args.answer_key, args.data_source_key, args.data_source, args.limit)
    meta = {
        "source": "sample", "model": args.model, "data": str(args.data), "backend": args.backend,
        "n": args.n, "temperature": args.temperature, "top_p": args.top_p, "max_new_tokens": args.max_new_tokens,
        "seed": args.seed, "chat_template": not args.no_chat_template,
    }
    writer = ResultsWriter(args.out, meta)
    for p in problems:
        writer.check_prompt(p)
    if all(p.uid in writer.done for p in problems):
        print(f"all {len(problems)} problems already in {args.out}")
        return 0
    if args.backend == "vllm":
        sampler = VLLMSampler(
            args.model, config, tensor_parallel_size=args.tensor_parallel_size,
            gpu_memory_utilization=args.gpu_memory_utilization, dtype=args.dtype,
        )
        tokenizer = sampler.llm.get_tokenizer()
        per_batch = args.problems_per_batch or 64
    else:
        device = _device(args.device)
        tokenizer = load_tokenizer(args.model)
        sampler = HFSampler(load_model(args.model, device, args.dtype), tokenizer, config, device)
        per_batch = args.problems_per_batch or max(1, args.batch_size // args.n)
    results = sample_dataset(
        problems, sampler, tokenizer, writer, args.n, per_batch, args.seed,
        progress=not args.no_progress, use_chat_template=not args.no_chat_template,
    )
    acc = sum(r.num_correct for r in results) / max(1, sum(r.n for r in results))
    print(f"{len(results)} problems x {args.n} samples -> {args.out} (mean accuracy {acc:.4f})")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from reweight.evaluation.sampling import load_response_file, score_response_file

    problems = None
    if args.data:
        problems = load_problems(args.data, args.prompt_key, args.answer_key, args.data_source_key, args.data_source, args.limit)
    pairs = load_response_file(
        args.responses, args.response_key, args.group_key, args.answer_key if not args.data else None,
        args.data_source_key, args.prompt_key, args.data_source, problems,
    )
    writer = ResultsWriter(args.out, {"source": "file", "responses": str(args.responses)})
    results = score_response_file(pairs, writer, progress=not args.no_progress)
    total = sum(r.n for r in results)
    acc = sum(r.num_correct for r in results) / max(1, total)
    print(f"{len(results)} problems, {total} responses -> {args.out} (mean accuracy {acc:.4f})")
    return 0


def cmd_support(args: argparse.Namespace) -> int:
    from reweight.evaluation.report import dumps_json
    from reweight.evaluation.support import ProblemSupport, aggregate_support, pair_support

    _, base_results = read_results(args.base_results)
    _, rl_results = read_results(args.rl_results)
    n_min = min(r.n for r in list(base_results) + list(rl_results))
    if args.k is not None and args.k > n_min:
        raise EvalInputError(f"--k {args.k} exceeds the samples per problem in the results (n={n_min}); k > n")
    tokenizer = load_tokenizer(args.base_model)
    rl_tokenizer = load_tokenizer(args.rl_model)
    if rl_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise EvalInputError(f"tokenizers of {args.base_model!r} and {args.rl_model!r} differ; support metrics need one shared tokenizer")
    meta = {
        "base_model": args.base_model, "rl_model": args.rl_model, "base_results": str(args.base_results),
        "rl_results": str(args.rl_results), "k": args.k, "zeta": args.zeta, "epsilon": args.epsilon,
        "chat_template": not args.no_chat_template, "token_entropy": not args.no_token_entropy,
    }
    log = AppendLog(str(args.out) + ".rows.jsonl", meta, "support rows file")
    done = {uid: ProblemSupport(**rec) for uid, rec in log.records.items()}
    device = _device(args.device)
    base_model = load_model(args.base_model, device, args.dtype)
    rl_model = load_model(args.rl_model, device, args.dtype)
    rows, eps = pair_support(
        base_results, rl_results, base_model, rl_model, tokenizer, k=args.k, zeta=args.zeta, epsilon=args.epsilon,
        token_entropy=not args.no_token_entropy, batch_size=args.batch_size,
        use_chat_template=not args.no_chat_template, progress=not args.no_progress,
        done=done, on_row=lambda row: log.append(asdict(row)),
    )
    k = args.k or min(min(b.n for b in base_results), min(r.n for r in rl_results))
    out = {
        "base": args.base_model, "rl": args.rl_model, "k": k, "zeta": args.zeta, "epsilon": eps,
        "aggregate": aggregate_support(rows), "problems": [asdict(r) for r in rows],
    }
    write_text_atomic(args.out, dumps_json(out))
    agg = out["aggregate"]["average"]
    print(
        f"support over {len(rows)} problems (eps={eps:.4g}): P={agg['preservation']} S={agg['shrinkage']} "
        f"E={agg['expansion']} SRR={agg['SRR']:.3f} NDR={agg['NDR']:.3f} -> {args.out}"
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from reweight.evaluation.report import build_report, write_report

    labelled: dict[str, str] = {}
    for item in args.results:
        if "=" not in item:
            raise EvalInputError(f"--results {item!r}: expected LABEL=PATH (e.g. base=runs/base.jsonl)")
        label, path = item.split("=", 1)
        if not label or label in labelled:
            raise EvalInputError(f"--results {item!r}: empty or repeated label {label!r}")
        labelled[label] = path
    results = {label: read_results(path)[1] for label, path in labelled.items()}
    support = None
    if args.support:
        _check_exists(args.support, "support file")
        support = json.loads(Path(args.support).read_text())
        if "aggregate" not in support or "epsilon" not in support:
            raise EvalInputError(f"support file {args.support!r} lacks 'aggregate'/'epsilon'; make it with `reweight-eval support`")
    report = build_report(results, args.k, args.bootstrap, args.confidence, args.seed, support)
    paths = write_report(report, args.out_dir, plot=not args.no_plot)
    print("\n".join(f"{kind}: {path}" for kind, path in paths.items()))
    return 0


COMMANDS = {"sample": cmd_sample, "score": cmd_score, "support": cmd_support, "report": cmd_report}


MODEL_FLAGS = {"sample": ("model",), "support": ("base_model", "rl_model")}


def main(argv: list[str] | None = None) -> int:
    from reweight.checks import check_model_path
    from reweight.cli_errors import run_cli

    args = build_parser().parse_args(argv)

    def body() -> int:  # bad input (EvalInputError is a ValueError): one line, status 2
        for dest in MODEL_FLAGS.get(args.command, ()):  # a missing path is refused here, not by the hub client
            check_model_path(getattr(args, dest), "--" + dest.replace("_", "-"))
        return COMMANDS[args.command](args)

    return run_cli(f"reweight-eval {args.command}", body)


if __name__ == "__main__":
    sys.exit(main())
