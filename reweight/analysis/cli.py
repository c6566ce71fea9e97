"""``reweight-analyze``: exact token-level Δlog p / entropy / KL between a base and an RLVR model.

Examples::

    # score existing responses (columns: prompt, response, source = base|rl)
    reweight-analyze --base Qwen/Qwen2.5-Math-7B --rl ./ckpt/dapo-7b \\
        --responses responses.parquet --out analysis/

    # sample 4 responses per prompt from each model, then score them all
    reweight-analyze --base ./base --rl ./rl --prompts prompts.jsonl --chat-template \\
        --generate-with base,rl --samples-per-prompt 4 --max-new-tokens 1024 --out analysis/

Re-running with the same arguments resumes: finished shards are skipped.
"""

from __future__ import annotations

import argparse
import json
import sys

from reweight.analysis.metrics import METRIC_NAMES
from reweight.analysis.pipeline import AnalysisConfig, run_analysis
from reweight.analysis.report import DEFAULT_THRESHOLDS, HIST_METRICS
from reweight.models import DTYPE_CHOICES


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="reweight-analyze",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--base", dest="base_model", required=True, help="base model: HF hub id, HF directory or verl checkpoint dir")
    p.add_argument("--rl", dest="rl_model", required=True, help="RLVR model: HF hub id, HF directory or verl checkpoint dir (same tokenizer)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--responses", help="parquet/jsonl with a prompt and a response per row")
    src.add_argument("--prompts", help="parquet/jsonl with prompts; responses are generated (see --generate-with)")
    p.add_argument("--out", required=True, help="output directory (re-running resumes)")
    g = p.add_argument_group("input columns")
    g.add_argument("--prompt-key", default="prompt", help="prompt column: text, chat messages or token ids")
    g.add_argument("--response-key", default="response", help="response column: text or token ids")
    g.add_argument("--source-key", default="source", help="column naming the model that produced the response")
    g.add_argument("--source", default=None, help="source label for all rows when there is no source column")
    g.add_argument("--id-key", default=None, help="sample id column (default: 'id' if present, else the row number)")
    g.add_argument("--chat-template", action="store_true", help="wrap text prompts as a user turn in the chat template")
    g = p.add_argument_group("generation (with --prompts)")
    g.add_argument("--generate-with", type=_names, default=("base", "rl"), help="comma list of base,rl")
    g.add_argument("--samples-per-prompt", type=int, default=1)
    g.add_argument("--max-new-tokens", type=int, default=512)
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("computation")
    g.add_argument("--temperature", type=float, default=1.0, help="π = softmax(logits/T); also the sampling T")
    g.add_argument("--chunk-size", type=int, default=None, help="positions per LM-head chunk (default: from vocab)")
    g.add_argument("--batch-tokens", type=int, default=16384, help="padded tokens per scoring batch")
    g.add_argument("--max-batch-size", type=int, default=64)
    g.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda, cuda:N")
    g.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help="weights dtype (auto: bf16 on GPU, fp32 on CPU)")
    g.add_argument("--num-workers", type=int, default=None, help="Ray workers (default: number of GPUs, else 1)")
    g.add_argument("--shard-size", type=int, default=256, help="responses per shard (the unit of resumption)")
    g.add_argument("--overwrite", action="store_true", help="discard finished shards of a different job in --out")
    g = p.add_argument_group("report")
    g.add_argument("--thresholds", type=_floats, default=DEFAULT_THRESHOLDS, help="|Δlog p| thresholds, comma list")
    g.add_argument("--hist-metrics", type=_names, default=HIST_METRICS, help=f"panels, from {list(METRIC_NAMES)}")
    g.add_argument("--top-k", type=int, default=50, help="most positive / negative Δlog p tokens to list")
    g.add_argument("--context", type=int, default=24, help="tokens of context before each listed token")
    g.add_argument("--no-figure", action="store_true", help="do not draw histograms.png (about 4 s on a CPU)")
    g.add_argument("--no-progress", action="store_true")
    return p


def config_from_args(args: argparse.Namespace) -> AnalysisConfig:
    if args.num_workers is None:
        import torch

        args.num_workers = max(1, torch.cuda.device_count()) if args.device in ("auto", "cuda") else 1
    return AnalysisConfig(
        base_model=args.base_model,
        rl_model=args.rl_model,
        out_dir=args.out,
        responses=args.responses,
        prompts=args.prompts,
        generate_with=args.generate_with,
        samples_per_prompt=args.samples_per_prompt,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        prompt_key=args.prompt_key,
        response_key=args.response_key,
        source_key=args.source_key,
        id_key=args.id_key,
        source=args.source,
        chat_template=args.chat_template,
        temperature=args.temperature,
        chunk_size=args.chunk_size,
        batch_tokens=args.batch_tokens,
        max_batch_size=args.max_batch_size,
        device=args.device,
        dtype=args.dtype,
        num_workers=args.num_workers,
        shard_size=args.shard_size,
        thresholds=args.thresholds,
        hist_metrics=args.hist_metrics,
        top_k=args.top_k,
        context=args.context,
        figure=not args.no_figure,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )


def main(argv: list[str] | None = None) -> int:
    from reweight.checks import check_model_path
    from reweight.cli_errors import run_cli
    from reweight.file_checks import require_output

    args = build_parser().parse_args(argv)
    result: dict = {}

    def body() -> None:  # bad input: one line and status 2, not a traceback
        check_model_path(args.base_model, "--base")  # a missing path is refused here, not by the hub client
        check_model_path(args.rl_model, "--rl")
        require_output(args.out, "--out", "dir")  # before the models load (it took 15 s to fail on /proc)
        result.update(run_analysis(config_from_args(args)))

    code = run_cli("reweight-analyze", body)
    if code:
        raise SystemExit(code)
    summary = result
    brief = {
        "out": args.out,
        "n_samples": summary["n_samples"],
        "n_tokens": summary["n_tokens"],
        "n_empty_responses": summary["n_empty_responses"],
        "per_source_means": summary["per_source_means"],
        "abs_delta_logp_above": summary["abs_delta_logp_above"]["all"],
    }
    print(json.dumps(brief, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
