"""Reading problems and responses, and the resumable per-problem results file.

Inputs are verl-style tables (parquet, jsonl or json) with a chat ``prompt``, a ground truth
(``reward_model.ground_truth`` by default, any dotted key allowed) and a ``data_source``. Keys
are checked on every row before any model is loaded, and errors name the key and the file.

The results file is JSON lines: a first ``{"meta": {...}}`` line with the sampling settings,
then one line per finished problem (:class:`ProblemResult`). Lines are appended and fsync'd one
problem at a time, so an interrupted run keeps every finished problem; a torn last line (the
process died mid-write) is cut off when the file is reopened. Resuming with different settings
(model, n, temperature, ...) is refused, naming the setting.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reweight.io import write_text_atomic

DEFAULT_PROMPT_KEY = "prompt"
DEFAULT_ANSWER_KEY = "reward_model.ground_truth"
DEFAULT_DATA_SOURCE_KEY = "data_source"
RESPONSE_KEYS = ("responses", "response", "completions", "completion", "text", "output")
GROUP_KEYS = ("uid", "problem_uid", "prompt_index", "problem_index", "prompt_id", "problem_id", "index", "row")
ANSWER_KEYS = ("reward_model.ground_truth", "ground_truth", "answer", "solution")


class EvalInputError(ValueError):
    """Bad evaluation input (missing key, empty file, inconsistent resume), detected before work starts."""


# ---------------------------------------------------------------------------------------------- tables


def _plain(value: Any) -> Any:
    """numpy/pandas containers (what parquet struct/list columns come back as) -> plain Python."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def load_table(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a parquet, jsonl or json (list of objects) file as plain dicts.

    Raises FileNotFoundError / EvalInputError naming the file when it is missing, empty or of an
    unknown type.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"evaluation input {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise EvalInputError(f"evaluation input {str(path)!r} is empty")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pandas as pd

        rows = [_plain(r) for r in pd.read_parquet(path).to_dict(orient="records")]
    elif suffix in (".jsonl", ".ndjson"):
        rows = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise EvalInputError(f"{str(path)!r} line {lineno} is not valid JSON: {err}") from None
    elif suffix == ".json":
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, list):
            raise EvalInputError(f"{str(path)!r}: a .json input must hold a list of row objects")
        rows = data
    else:
        raise EvalInputError(f"{str(path)!r}: unknown input type {suffix!r}; use .parquet, .jsonl or .json")
    if not rows:
        raise EvalInputError(f"evaluation input {str(path)!r} has no rows")
    if not all(isinstance(r, dict) for r in rows):
        raise EvalInputError(f"{str(path)!r}: every row must be an object")
    return rows


_MISSING = object()


def get_key(row: dict[str, Any], dotted: str, default: Any = _MISSING) -> Any:
    """``row["a"]["b"]`` for ``dotted = "a.b"`` (a literal ``"a.b"`` column wins); KeyError if absent."""
    if dotted in row:
        return row[dotted]
    node: Any = row
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            if default is _MISSING:
                raise KeyError(dotted)
            return default
    return node


def has_key(row: dict[str, Any], dotted: str) -> bool:
    return get_key(row, dotted, None) is not None


def require_key(rows: Sequence[dict[str, Any]], key: str, path: str | os.PathLike, what: str) -> None:
    """Raise EvalInputError naming ``key`` and the file when any row lacks it."""
    for i, row in enumerate(rows):
        if not has_key(row, key):
            present = ", ".join(sorted(row.keys()))
            raise EvalInputError(
                f"{str(path)!r} row {i}: missing {what} column {key!r} (columns: {present}); "
                f"pass the right key (e.g. --answer-key / --prompt-key)"
            )


def first_present(row: dict[str, Any], keys: Iterable[str]) -> str | None:
    return next((k for k in keys if has_key(row, k)), None)


def resolve_answer_key(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> str:
    """The first of :data:`ANSWER_KEYS` present in row 0; EvalInputError naming them otherwise."""
    key = first_present(rows[0], ANSWER_KEYS)
    if key is None:
        raise EvalInputError(
            f"{str(path)!r}: no ground-truth column; expected one of {', '.join(ANSWER_KEYS)} "
            f"(columns: {', '.join(sorted(rows[0].keys()))}); pass --answer-key"
        )
    return key


# ---------------------------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class EvalProblem:
    """One evaluation problem. ``prompt`` is a chat message list (or a plain string)."""

    uid: str
    prompt: list[dict[str, str]] | str
    ground_truth: str
    data_source: str

    @property
    def prompt_sha(self) -> str:
        return hashlib.sha256(json.dumps(self.prompt, sort_keys=True).encode()).hexdigest()[:16]


def load_problems(
    path: str | os.PathLike,
    prompt_key: str = DEFAULT_PROMPT_KEY,
    answer_key: str | None = None,
    data_source_key: str = DEFAULT_DATA_SOURCE_KEY,
    default_data_source: str | None = None,
    limit: int | None = None,
) -> list[EvalProblem]:
    """Problems of a verl-style dataset; every key checked on every row first.

    ``answer_key`` None: the first of :data:`ANSWER_KEYS` present (verl's
    ``reward_model.ground_truth``, then ``ground_truth``, ``answer``, ``solution``), checked per row.
    uid = ``{data_source}/{row position}``: stable for the same file. The data source comes from
    ``data_source_key`` when the table has it, else ``default_data_source`` (error if neither).
    """
    rows = load_table(path)
    if limit is not None:
        if limit <= 0:
            raise EvalInputError(f"limit must be positive, got {limit}")
        rows = rows[:limit]
    require_key(rows, prompt_key, path, "prompt")
    if answer_key is None:
        answer_key = resolve_answer_key(rows, path)
    require_key(rows, answer_key, path, "ground-truth")
    if default_data_source is None:
        require_key(rows, data_source_key, path, "data_source")
    problems = []
    for i, row in enumerate(rows):
        prompt = get_key(row, prompt_key)
        if not isinstance(prompt, (str, list)):
            raise EvalInputError(f"{str(path)!r} row {i}: prompt {prompt_key!r} must be a chat list or a string")
        source = str(get_key(row, data_source_key, default_data_source))
        problems.append(EvalProblem(f"{source}/{i}", prompt, str(get_key(row, answer_key)), source))
    return problems


# ---------------------------------------------------------------------------------------------- results


@dataclass
class ProblemResult:
    """All samples of one problem, scored. Lists have one entry per sample (length n)."""

    uid: str
    data_source: str
    ground_truth: str
    prompt: list[dict[str, str]] | str | None
    responses: list[str]
    correct: list[bool]
    answers: list[str | None] = field(default_factory=list)
    finish_reasons: list[str | None] = field(default_factory=list)
    prompt_sha: str | None = None

    @property
    def n(self) -> int:
        return len(self.responses)

    @property
    def num_correct(self) -> int:
        return int(sum(self.correct))


def _fsync_append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _cut_torn_tail(path: Path) -> None:
    """Drop a last line without its newline (a write interrupted mid-way), atomically."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data[: data.rfind(b"\n") + 1]
        write_text_atomic(path, keep.decode("utf-8"))


def read_results(path: str | os.PathLike) -> tuple[dict[str, Any], list[ProblemResult]]:
    """(meta, results) of a results file; a torn last line is ignored; duplicates keep the first."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise EvalInputError(f"results file {str(path)!r} is empty")
    meta, records = _read_log(path, "results file")
    if not records:
        raise EvalInputError(f"results file {str(path)!r} holds no finished problem")
    try:
        return meta, [ProblemResult(**rec) for rec in records.values()]
    except TypeError as err:
        raise EvalInputError(f"results file {str(path)!r} is not a reweight-eval results file: {err}") from None


class AppendLog:
    """A JSON-lines file of records keyed by ``"uid"``, after a ``{"meta": ...}`` first line.

    Append-only and fsync'd per record, so an interrupted job keeps every finished record.
    Reopening an existing file cuts a torn last line, loads the records (:attr:`records`, first
    occurrence of a uid wins) and refuses a different value for any key in both metas, naming it.
    """

    def __init__(self, path: str | os.PathLike, meta: dict[str, Any], what: str = "results file"):
        self.path = Path(path)
        self.what = what
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.exists() and self.path.stat().st_size > 0:
            _cut_torn_tail(self.path)
            old_meta, records = _read_log(self.path, what)
            for key in sorted(set(old_meta) & set(meta)):
                if old_meta[key] != meta[key]:
                    raise EvalInputError(
                        f"{what} {str(self.path)!r} was made with {key}={old_meta[key]!r}, "
                        f"this run has {key}={meta[key]!r}; use another output path or the same settings"
                    )
            self.records = records
        else:
            write_text_atomic(self.path, json.dumps({"meta": meta}) + "\n")

    def append(self, record: dict[str, Any]) -> None:
        _fsync_append(self.path, json.dumps(record) + "\n")
        self.records.setdefault(record["uid"], record)


def _read_log(path: Path, what: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    data = path.read_text(encoding="utf-8")
    lines = data.split("\n")
    if not data.endswith("\n"):
        lines = lines[:-1]  # torn tail: the process died mid-write
    meta: dict[str, Any] = {}
    records: dict[str, dict[str, Any]] = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise EvalInputError(f"{what} {str(path)!r} line {lineno} is not valid JSON: {err}") from None
        if "meta" in obj and "uid" not in obj:
            meta = obj["meta"]
        elif "uid" in obj:
            records.setdefault(str(obj["uid"]), obj)
        else:
            raise EvalInputError(f"{what} {str(path)!r} line {lineno}: a record without 'uid'")
    return meta, records


class ResultsWriter:
    """Append-only results file of :class:`ProblemResult`; reopening resumes (finished uids in :attr:`done`)."""

    def __init__(self, path: str | os.PathLike, meta: dict[str, Any]):
        self.log = AppendLog(path, meta, "results file")
        self.path = self.log.path
        self.done: dict[str, ProblemResult] = {uid: ProblemResult(**rec) for uid, rec in self.log.records.items()}

    def append(self, result: ProblemResult) -> None:
        self.log.append(asdict(result))
        self.done.setdefault(result.uid, result)

    def check_prompt(self, problem: EvalProblem) -> None:
        """Refuse to resume into a file whose finished problem has the same uid but another prompt."""
        old = self.done.get(problem.uid)
        if old is not None and old.prompt_sha is not None and old.prompt_sha != problem.prompt_sha:
            raise EvalInputError(
                f"results file {str(self.path)!r} holds problem {problem.uid!r} with a different prompt; "
                "it was made from another dataset"
            )


def write_results(path: str | os.PathLike, meta: dict[str, Any], results: Iterable[ProblemResult]) -> None:
    """Write a whole results file atomically."""
    lines = [json.dumps({"meta": meta})] + [json.dumps(asdict(r)) for r in results]
    write_text_atomic(path, "\n".join(lines) + "\n")


def iter_batches(items: Sequence[Any], size: int) -> Iterator[tuple[int, Sequence[Any]]]:
    """(batch index, items) in fixed positions (batch b holds items [b*size, (b+1)*size))."""
    if size <= 0:
        raise ValueError(f"batch size must be positive, got {size}")
    for b, start in enumerate(range(0, len(items), size)):
        yield b, items[start : start + size]
