"""``reweight-eval``: sample and score, score a file of responses, support metrics, report.

    reweight-eval sample  --model CKPT --data aime24.parquet --out runs/rl.jsonl --n 32 \\
                          --temperature 1.0 --top-p 0.7 --max-new-tokens 4096 [--backend vllm]
    reweight-eval score   --responses decode_out.jsonl --out runs/reweighted.jsonl [--data aime24.parquet]
    reweight-eval support --base-results runs/base.jsonl --rl-results runs/rl.jsonl \\
                          --out runs/support.json [--k 32] [--base B --rl R | --no-token-entropy]
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
from pathlib import Path

from reweight.evaluation.records import (
    DEFAULT_DATA_SOURCE_KEY,
    DEFAULT_PROMPT_KEY,
    EvalInputError,
    ResultsWriter,
    load_problems,
    read_results,
)
from reweight.models import DTYPE_CHOICES, load_model, load_tokenizer, resolve_model_path


def _dataset_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--data", required=required, help="dataset (.parquet/.jsonl/.json, verl schema)")
    p.add_argument("--prompt-key", default=DEFAULT_PROMPT_KEY, help="prompt column (chat list or string)")
    p.add_argument("--answer-key", default=None, help="ground-truth column, dotted (default: reward_model.ground_truth, ground_truth, answer, solution)")
    p.add_argument("--data-source-key", default=DEFAULT_DATA_SOURCE_KEY, help="column naming the benchmark / checker")
    p.add_argument("--data-source", default=None, help="data source for rows without one (selects the checker)")
    p.add_argument("--limit", type=int, default=None, help="only the first N problems")


def _scorer_arg(p: argparse.ArgumentParser) -> None:
    from reweight.evaluation.scoring import DEFAULT_SCORER, SCORERS

    p.add_argument(
        "--scorer", default=DEFAULT_SCORER, choices=SCORERS,
        help="dapo: the training reward with DAPO's Answer-line rule (default; the same function training used); "
        "verl: the training reward with verl's \\boxed{} fallback; boxed: last \\boxed{} + math_verify",
    )


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="torch device (auto: cuda if available, else cpu)")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help="weights dtype (auto: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--no-chat-template", action="store_true", help="feed prompts without the chat template")
    p.add_argument("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reweight-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sample", help="sample n responses per problem from a model and score them")
    s.add_argument("--model", required=True, help="HF hub id, HF directory or verl checkpoint dir (global_step_N or experiment)")
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
    _scorer_arg(s)
    s.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vllm only")
    _model_args(s)

    f = sub.add_parser("score", help="score a file of responses (e.g. reweight-decode output)")
    f.add_argument("--responses", required=True, help="responses file (.jsonl/.parquet/.json)")
    f.add_argument("--out", required=True, help="results file (.jsonl); resumed when it exists")
    _dataset_args(f, required=False)
    f.add_argument("--response-key", default=None, help="response column (list per problem, or one string per row)")
    f.add_argument("--group-key", default=None, help="problem-id column (one response per row); a dataset row index or uid")
    f.add_argument("--no-progress", action="store_true")
    _scorer_arg(f)

    u = sub.add_parser(
        "support",
        help="Invisible Leash support / entropy metrics of a base and an RL model (from results files; models only for token entropy)",
    )
    u.add_argument("--base", dest="base_model", default=None, help="base checkpoint (only for token entropy)")
    u.add_argument("--rl", dest="rl_model", default=None, help="RL checkpoint (only for token entropy)")
    u.add_argument("--base-results", required=True, help="results file of the base model (reweight-eval sample/score)")
    u.add_argument("--rl-results", required=True, help="results file of the RL model")
    u.add_argument("--out", required=True, help="support JSON; per-problem rows are kept in OUT.rows.jsonl for resuming")
    u.add_argument("--k", type=int, default=None, help="sampling budget: the first k samples of each problem (default: n)")
    u.add_argument("--zeta", type=float, default=0.05, help="confidence level of the reported ε = -ln(ζ)/k bound")
    u.add_argument("--batch-size", type=int, default=8, help="sequences per teacher-forced forward")
    u.add_argument("--no-token-entropy", action="store_true", help="skip token entropy (no model is loaded)")
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
        "seed": args.seed, "chat_template": not args.no_chat_template, "scorer": args.scorer,
        # what --model stood for (a verl experiment dir: its latest step), so a resume after more training refuses
        "model_path": resolve_model_path(args.model),
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
        tokenizer = load_tokenizer(args.model)
        model = load_model(args.model, args.device, args.dtype)
        sampler = HFSampler(model, tokenizer, config, model.device)
        per_batch = args.problems_per_batch or max(1, args.batch_size // args.n)
    results = sample_dataset(
        problems, sampler, tokenizer, writer, args.n, per_batch, args.seed,
        progress=not args.no_progress, use_chat_template=not args.no_chat_template, scorer=args.scorer,
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
    writer = ResultsWriter(args.out, {"source": "file", "responses": str(args.responses), "scorer": args.scorer})
    results = score_response_file(pairs, writer, progress=not args.no_progress, scorer=args.scorer)
    total = sum(r.n for r in results)
    acc = sum(r.num_correct for r in results) / max(1, total)
    print(f"{len(results)} problems, {total} responses -> {args.out} (mean accuracy {acc:.4f})")
    return 0


def cmd_support(args: argparse.Namespace) -> int:
    from reweight.evaluation.support import support_file

    out = support_file(
        args.base_results, args.rl_results, args.out, k=args.k, zeta=args.zeta, base_model=args.base_model,
        rl_model=args.rl_model, token_entropy=not args.no_token_entropy, device=args.device, dtype=args.dtype,
        batch_size=args.batch_size, use_chat_template=not args.no_chat_template, progress=not args.no_progress,
    )
    agg, k = out["aggregate"]["average"], out["k"]
    print(
        f"support over {len(out['problems'])} problems (first k={k} samples): P={agg['preservation']} S={agg['shrinkage']} "
        f"E={agg['expansion']} O={agg['neither']} SRR={agg['SRR']:.3f} NDR={agg['NDR']:.3f} NSCR={agg['NSCR']:.3f} -> {args.out}"
    )
    if out["num_unmatched"]:
        print(f"warning: {out['num_unmatched']} problems are in only one of the two results files and were left out")
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
        if "aggregate" not in support or "k" not in support:
            raise EvalInputError(f"support file {args.support!r} lacks 'aggregate'/'k'; make it with `reweight-eval support`")
    report = build_report(results, args.k, args.bootstrap, args.confidence, args.seed, support)
    paths = write_report(report, args.out_dir, plot=not args.no_plot)
    print("\n".join(f"{kind}: {path}" for kind, path in paths.items()))
    return 0


COMMANDS = {"sample": cmd_sample, "score": cmd_score, "support": cmd_support, "report": cmd_report}


MODEL_FLAGS = {"sample": {"model": "--model"}, "support": {"base_model": "--base", "rl_model": "--rl"}}


def main(argv: list[str] | None = None) -> int:
    from reweight.checks import check_model_path
    from reweight.cli_errors import run_cli
    from reweight.file_checks import require_output

    args = build_parser().parse_args(argv)

    def body() -> int:  # bad input (EvalInputError is a ValueError): one line, status 2
        for dest, flag in MODEL_FLAGS.get(args.command, {}).items():  # a missing path is refused here, not by the hub
            if getattr(args, dest) is not None:  # support's models are optional (token entropy only)
                check_model_path(getattr(args, dest), flag)
        require_output(getattr(args, "out", None), "--out")  # before any model loads or sampling
        require_output(getattr(args, "out_dir", None), "--out-dir", "dir")
        return COMMANDS[args.command](args)

    return run_cli(f"reweight-eval {args.command}", body)


if __name__ == "__main__":
    sys.exit(main())
