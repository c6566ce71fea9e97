"""``reweight-prepare-data``: DAPO-Math-17k (train) and AIME24 / AIME25 / AMC (validation) as verl parquet.

    reweight-prepare-data                                # all four from the Hugging Face hub
    reweight-prepare-data --only aime24,amc --out-dir ~/data/verl-reweight
    reweight-prepare-data --from-file aime24=/data/aime24.jsonl --from-file amc=/data/amc.parquet

Each output row has verl's RL schema: ``data_source``, chat-format ``prompt`` (one user message with
DAPO's instruction to end with an ``Answer:`` line, which verl's ``math_dapo`` scorer reads),
``ability``, ``reward_model`` (``style``, ``ground_truth``) and ``extra_info`` (``index``, ``split``).
Inputs may already be in that schema (DAPO's own parquet files) or be plain problem/answer tables;
problems are de-duplicated (DAPO-Math-17k's hub file repeats each prompt). AIME24 is repeated 32×
by default, as the paper's avg@32 validation file is. Files are written atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from reweight.io import write_parquet_atomic

DEFAULT_OUT_DIR = "~/data/verl-reweight"
PROG = "reweight-prepare-data"

DAPO_INSTRUCTION = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem."
)
DAPO_REMINDER = 'Remember to put your answer on its own line after "Answer:".'
# How DAPO-formatted prompts wrap the problem; used to recover the bare problem for de-duplication.
_DAPO_WRAPPED = re.compile(re.escape(DAPO_INSTRUCTION) + r"\s*(.*?)\s*" + re.escape(DAPO_REMINDER) + r"\s*$", re.S)

PROBLEM_COLUMNS = ("problem", "Problem", "question", "Question", "prompt")
ANSWER_COLUMNS = ("answer", "Answer", "ground_truth", "solution_answer")


@dataclass(frozen=True)
class Source:
    """One dataset: where it comes from on the hub and how it is written."""

    name: str  # output file stem and CLI name
    data_source: str  # verl's data_source (selects the reward function and names val metrics)
    hub_id: str
    hub_split: str
    split: str  # "train" or "test"
    repeat: int = 1
    hub_config: str | None = None


SOURCES = {
    s.name: s
    for s in (
        Source("dapo-math-17k", "math_dapo", "BytedTsinghua-SIA/DAPO-Math-17k", "train", "train"),
        Source("aime24", "aime24", "Maxwell-Jia/AIME_2024", "train", "test", repeat=32),
        Source("aime25", "aime25", "yentinglin/aime_2025", "train", "test"),
        Source("amc", "amc", "AI-MO/aimo-validation-amc", "train", "test"),
    )
}


def dapo_prompt(problem: str) -> str:
    """The user message for a problem, in DAPO-Math-17k's format."""
    return f"{DAPO_INSTRUCTION}\n\n{problem.strip()}\n\n{DAPO_REMINDER}"


def normalise_answer(answer) -> str:
    """Ground truth as a string; integral floats ("142.0", 142.0) become "142"."""
    text = str(answer).strip()
    try:
        value = float(text)
    except ValueError:
        return text
    return str(int(value)) if value.is_integer() and "e" not in text.lower() else text


def _problem_and_answer(row: dict, where: str) -> tuple[str, str]:
    """Read (problem, answer) from a verl-schema row or a plain problem/answer row."""
    prompt = row.get("prompt")
    if isinstance(prompt, (list, tuple)) or hasattr(prompt, "tolist"):
        messages = list(prompt.tolist() if hasattr(prompt, "tolist") else prompt)
        text = next((m["content"] for m in messages if m.get("role") == "user"), None)
        if text is None:
            raise ValueError(f"{where}: 'prompt' has no user message")
        match = _DAPO_WRAPPED.match(text.strip())
        problem = match.group(1) if match else text
        reward_model = row.get("reward_model") or {}
        if "ground_truth" not in reward_model:
            raise ValueError(f"{where}: verl-schema row lacks reward_model.ground_truth")
        return problem, normalise_answer(reward_model["ground_truth"])
    problem_col = next((c for c in PROBLEM_COLUMNS if c in row and row[c] is not None), None)
    answer_col = next((c for c in ANSWER_COLUMNS if c in row and row[c] is not None), None)
    if problem_col is None:
        raise ValueError(f"{where}: no problem column (expected one of {list(PROBLEM_COLUMNS)}); got {sorted(row)}")
    if answer_col is None:
        raise ValueError(f"{where}: no answer column (expected one of {list(ANSWER_COLUMNS)}); got {sorted(row)}")
    return str(row[problem_col]), normalise_answer(row[answer_col])


def to_verl_rows(records: Iterable[dict], source: Source, where: str, repeat: int | None = None) -> list[dict]:
    """De-duplicated, DAPO-formatted verl rows for ``records`` (each problem ``repeat`` times, consecutively)."""
    seen: dict[str, str] = {}
    for i, record in enumerate(records):
        problem, answer = _problem_and_answer(record, f"{where}, row {i}")
        key = " ".join(problem.split())
        if key in seen and seen[key] != answer:
            raise ValueError(f"{where}: problem {key[:60]!r}... appears with two answers ({seen[key]!r}, {answer!r})")
        seen.setdefault(key, answer)
    if not seen:
        raise ValueError(f"{where}: no rows")
    rows = []
    for index, (problem, answer) in enumerate(seen.items()):
        for r in range(repeat if repeat is not None else source.repeat):
            rows.append(
                {
                    "data_source": source.data_source,
                    "prompt": [{"role": "user", "content": dapo_prompt(problem)}],
                    "ability": "math",
                    "reward_model": {"style": "rule", "ground_truth": answer},
                    "extra_info": {"index": index, "repeat": r, "split": source.split, "source": source.name},
                }
            )
    return rows


def read_local(path: str | os.PathLike) -> list[dict]:
    """Rows of a local parquet, jsonl or json file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    if path.suffix == ".parquet":
        return pd.read_parquet(path).to_dict("records")
    if path.suffix == ".jsonl":
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    if path.suffix == ".json":
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, list) else data.get("data") or data.get("rows") or []
    raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use .parquet, .jsonl or .json")


def read_hub(source: Source) -> list[dict]:
    """Rows of ``source`` from the Hugging Face hub (needs network access)."""
    from datasets import load_dataset

    ds = load_dataset(source.hub_id, source.hub_config, split=source.hub_split)
    return list(ds)


def prepare(
    names: Sequence[str],
    out_dir: str | os.PathLike = DEFAULT_OUT_DIR,
    local_files: dict[str, str] | None = None,
    repeat: dict[str, int] | None = None,
) -> dict[str, Path]:
    """Write ``<out_dir>/<name>.parquet`` for each dataset name; local files replace the hub download."""
    local_files = dict(local_files or {})
    for name in [*names, *local_files, *(repeat or {})]:
        if name not in SOURCES:
            raise ValueError(f"unknown dataset {name!r}; known: {sorted(SOURCES)}")
    for name, path in local_files.items():  # fail on a missing file before any download
        if not Path(path).expanduser().is_file():
            raise FileNotFoundError(f"--from-file {name}={path}: file not found")
    out = Path(out_dir).expanduser()
    written = {}
    for name in names:
        source = SOURCES[name]
        if name in local_files:
            records, where = read_local(local_files[name]), str(local_files[name])
        else:
            records, where = read_hub(source), f"hub:{source.hub_id}"
        rows = to_verl_rows(records, source, where, (repeat or {}).get(name))
        written[name] = write_parquet_atomic(out / f"{name}.parquet", pd.DataFrame(list(rows)))
        print(f"[reweight-prepare-data] {name}: {len(rows)} rows -> {written[name]}")
    return written


def _pairs(values: Sequence[str], flag: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        if "=" not in value:
            raise ValueError(f"{flag} expects NAME=VALUE, got {value!r}")
        key, val = value.split("=", 1)
        pairs[key] = val
    return pairs


def main(argv: Sequence[str] | None = None) -> int:
    from reweight.cli_errors import run_cli
    from reweight.file_checks import require_output

    ap = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default=DEFAULT_OUT_DIR, help=f"output folder (default {DEFAULT_OUT_DIR})")
    ap.add_argument("--only", default=None, help=f"comma-separated subset of {sorted(SOURCES)}")
    ap.add_argument("--from-file", action="append", default=[], metavar="NAME=PATH",
                    help="read NAME from a local parquet/jsonl/json instead of the hub (repeatable)")
    ap.add_argument("--repeat", action="append", default=[], metavar="NAME=K",
                    help="write each problem of NAME K times (default: aime24=32, others 1)")
    args = ap.parse_args(argv)

    def body() -> None:
        require_output(args.out_dir, "--out-dir", "dir")
        names = args.only.split(",") if args.only else list(SOURCES)
        repeat = {}
        for k, v in _pairs(args.repeat, "--repeat").items():
            try:
                repeat[k] = int(v)
            except ValueError:
                raise ValueError(f"--repeat {k}={v!r}: K must be an integer") from None
            if repeat[k] < 1:
                raise ValueError(f"--repeat {k}={v!r}: K must be >= 1")
        prepare(names, args.out_dir, _pairs(args.from_file, "--from-file"), repeat)

    code = run_cli(PROG, body)
    if code:  # raised, so that callers that expect SystemExit on bad input keep working
        raise SystemExit(code)
    return 0


if __name__ == "__main__":
    main()
