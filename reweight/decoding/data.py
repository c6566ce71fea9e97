"""Evaluation prompts for decoding: verl RL parquet files or JSON-lines, with ground truths.

Accepted columns (checked before any model is loaded):

* ``prompt``: a chat (list of ``{"role", "content"}`` messages, verl's schema) or a plain string
  (wrapped as one user message when the tokenizer has a chat template);
* the ground truth: ``reward_model.ground_truth`` (verl's schema) or a top-level
  ``ground_truth`` / ``answer`` column;
* optional ``data_source`` (selects the answer checker; default: none → math checker).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GROUND_TRUTH_COLUMNS = ("ground_truth", "answer")


@dataclass(frozen=True)
class EvalPrompt:
    """One prompt: its chat messages, reference answer and data source."""

    messages: tuple[tuple[str, str], ...]  # (role, content) pairs
    ground_truth: str
    data_source: str | None


def _as_messages(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if isinstance(value, str):
        return (("user", value),)
    if hasattr(value, "tolist"):  # numpy arrays from parquet
        value = value.tolist()
    if isinstance(value, (list, tuple)) and value and all(isinstance(m, dict) for m in value):
        try:
            return tuple((str(m["role"]), str(m["content"])) for m in value)
        except KeyError as e:
            raise ValueError(f"{where}: chat message without {e.args[0]!r}") from None
    raise ValueError(f"{where}: 'prompt' must be a string or a list of chat messages, got {type(value).__name__}")


def _ground_truth(row: dict[str, Any], where: str) -> str:
    rm = row.get("reward_model")
    if isinstance(rm, dict) and rm.get("ground_truth") is not None:
        return str(rm["ground_truth"])
    for col in GROUND_TRUTH_COLUMNS:
        if row.get(col) is not None:
            return str(row[col])
    raise ValueError(
        f"{where}: no ground truth; expected 'reward_model.ground_truth' or one of the columns "
        f"{', '.join(GROUND_TRUTH_COLUMNS)}"
    )


def load_prompts(path: str | Path, limit: int | None = None) -> list[EvalPrompt]:
    """Read a ``.parquet`` or ``.jsonl`` / ``.json`` file of prompts with ground truths.

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file, row and missing key.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        frame = pd.read_parquet(path)
        rows = frame.to_dict(orient="records")
    elif suffix in (".jsonl", ".json"):
        text = path.read_text()
        rows = [json.loads(line) for line in text.splitlines() if line.strip()] if suffix == ".jsonl" else json.loads(text)
        if not isinstance(rows, list):
            raise ValueError(f"{path}: a .json dataset must hold a list of records")
    else:
        raise ValueError(f"dataset {path}: unsupported format {suffix!r}; use .parquet or .jsonl")
    if not rows:
        raise ValueError(f"dataset {path} has no rows")
    if "prompt" not in rows[0]:
        raise ValueError(f"dataset {path} has no 'prompt' column (columns: {', '.join(map(str, rows[0]))})")
    if limit is not None:
        rows = rows[:limit]
    out = []
    for i, row in enumerate(rows):
        where = f"{path} row {i}"
        if "prompt" not in row:
            raise ValueError(f"{where}: missing 'prompt'")
        ds = row.get("data_source")
        out.append(EvalPrompt(_as_messages(row["prompt"], where), _ground_truth(row, where), None if ds is None else str(ds)))
    return out


def encode_prompt(tokenizer, prompt: EvalPrompt, use_chat_template: bool = True) -> list[int]:
    """Token ids of a prompt: the chat template with the generation prompt, or the raw user text."""
    messages = [{"role": r, "content": c} for r, c in prompt.messages]
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:
        text = "\n".join(c for _, c in prompt.messages)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
