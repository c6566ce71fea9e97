"""What is *inside* a run's files, read cheaply on this machine before anything expensive starts.

Each function returns a short reason (``None`` when the file is fine); the callers put the key or flag
and the value in front of it (``data.train_files='/x.parquet': not a parquet file ...``) and raise their
own error class. Nothing here writes anything that outlives the call, or reads more than a file's
header, footer or directory listing:

- :func:`data_file_problem`: a data file verl's ``RLHFDataset`` can read: a ``.parquet`` file whose
  footer parses (pyarrow reads the schema and the row count only), that has rows and the columns
  verl reads (the prompt, and for verl's rule-based reward managers ``data_source`` and
  ``reward_model.ground_truth``); a ``.json`` / ``.jsonl`` file that is not empty;
- :func:`model_dir_problem`: a Hugging Face model directory: ``config.json`` that transformers builds its
  config class from (as ``AutoConfig`` does), weights
  (``*.safetensors`` / ``*.bin`` or a sharded index whose shards are all there, each safetensors file
  as long as its header says), tokenizer files;
- :func:`checkpoint_problem`: a verl ``global_step_N`` directory whose ``.pt`` files are complete
  (a torch zip archive ends with its central directory: an emptied or cut file lacks it), with every
  rank's file of each kind that is there;
- :func:`output_dir_problem`: a directory that can be created and written, found by creating (and
  removing at once) a temporary directory in its deepest existing ancestor -- the one test that also
  holds for root, read-only file systems and ``/proc``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

DATA_SUFFIXES = (".parquet", ".json", ".jsonl")  # what verl 0.9.1's RLHFDataset reads, by file name
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model", "tokenizer_config.json")
CHECKPOINT_FILE = re.compile(r"^(?P<kind>.+)_world_size_(?P<ws>\d+)_rank_(?P<rank>\d+)\.pt$")


# ------------------------------------------------------------------------------------------ data


def data_file_problem(path: Path, columns: Sequence[str] = (), reader: str = "verl") -> str | None:
    """Why verl cannot train on ``path`` (an existing local file or directory), or None.

    ``columns``: top-level columns a parquet file must have; ``reward_model`` is also held to having a
    ``ground_truth`` field when it is a struct (what verl's reward managers read).
    """
    if path.is_dir():
        return f"a directory; verl reads files ending in {', '.join(DATA_SUFFIXES)} (list them, e.g. [a.parquet,b.parquet])"
    if not path.name.endswith(DATA_SUFFIXES):
        return f"verl reads only files ending in {', '.join(DATA_SUFFIXES)}"
    if path.stat().st_size == 0:
        return "an empty file"
    if not path.name.endswith(".parquet"):
        return None
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path)
        schema, rows = meta.schema_arrow, meta.metadata.num_rows
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for a file that is not parquet
        return f"not a parquet file ({_first_line(e)})"
    if rows == 0:
        return "a parquet file with no rows"
    missing = [c for c in columns if c not in schema.names]
    if missing:
        return (f"no {'column' if len(missing) == 1 else 'columns'} {', '.join(map(repr, missing))}, which {reader} reads "
                f"(it has {', '.join(map(repr, schema.names)) or 'none'})")
    if "reward_model" in columns:
        import pyarrow as pa

        field = schema.field("reward_model").type
        if pa.types.is_struct(field) and field.get_field_index("ground_truth") < 0:
            return "column 'reward_model' has no 'ground_truth' field, which verl's reward managers read"
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


# ------------------------------------------------------------------------------------------ model


def _safetensors_problem(path: Path) -> str | None:
    """A safetensors file is 8 bytes of header length, the JSON header, then the tensors it lists."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path.name} is truncated ({size} bytes)"
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return f"{path.name} is truncated ({size} bytes, shorter than its own header)"
            header = json.loads(f.read(n))
    except (OSError, ValueError) as e:
        return f"{path.name} is not a safetensors file ({_first_line(e)})"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        return f"{path.name} is truncated ({size} bytes; its header describes {8 + n + end})"
    return None


def weights_problem(model: Path) -> str | None:
    for name in WEIGHT_INDEXES:
        index = model / name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, AttributeError) as e:
                return f"{name} is not a weight index ({_first_line(e)})"
            for shard in shards:
                if not (model / shard).is_file():
                    return f"{name} lists {shard}, which is not there"
            files = [model / s for s in shards]
            break
    else:
        files = [model / n for n in WEIGHT_FILES if (model / n).is_file()]
        if not files:
            return f"no weights ({' / '.join(WEIGHT_FILES)} or a sharded index)"
    for f in files:
        if f.stat().st_size == 0:
            return f"{f.name} is empty"
        problem = _safetensors_problem(f) if f.name.endswith(".safetensors") else None
        if problem:
            return problem
    return None


_SAME = Path()  # "the model directory itself"


def model_dir_problem(path: Path, *, config: Path | None = _SAME, tokenizer: Path | None = _SAME,
                      trust_remote_code: bool = False) -> str | None:
    """Why ``path`` (an existing local path) is not a Hugging Face model directory verl can load, or None.

    ``config`` / ``tokenizer``: where verl reads them (``hf_config_path`` / ``tokenizer_path``; by default
    ``path`` itself); None skips that part (a hub id or a remote path, not checked here).
    """
    if not path.is_dir():
        return "a file; expected a Hugging Face model directory (config.json, weights, tokenizer)"
    if (path / "actor").is_dir() or (path / "fsdp_config.json").is_file():
        return ("a verl checkpoint, not a Hugging Face model directory: to continue that run use "
                "trainer.resume_mode=resume_path trainer.resume_from_path=<it>; to start from it, export it "
                "first (python -m verl.model_merger merge --backend fsdp)")
    config = path if config is _SAME else config
    tokenizer = path if tokenizer is _SAME else tokenizer
    if config is not None and config.is_dir():
        file = config / "config.json"
        if not file.is_file():
            listing = sorted(p.name for p in config.iterdir())[:5]
            what = "the directory is empty" if not listing else f"it holds {', '.join(listing)}"
            return f"no config.json in {config} ({what}): not a Hugging Face model directory"
        problem = _config_problem(config, trust_remote_code)
        if problem:
            return problem
    problem = weights_problem(path)
    if problem:
        return problem
    if tokenizer is not None and tokenizer.is_dir() and not any((tokenizer / n).is_file() for n in TOKENIZER_FILES) \
            and not any(tokenizer.glob("*.tiktoken")):
        return f"no tokenizer files in {tokenizer} (none of {', '.join(TOKENIZER_FILES)})"
    return None


def _config_problem(config: Path, trust_remote_code: bool) -> str | None:
    try:
        data = json.loads((config / "config.json").read_text())
    except (OSError, ValueError) as e:
        return f"{config / 'config.json'} is not JSON ({_first_line(e)})"
    if trust_remote_code or not isinstance(data, dict):  # remote code is not run here; a dict is all we can ask
        return None if isinstance(data, dict) else f"{config / 'config.json'} is not a JSON object"
    import transformers
    from transformers import CONFIG_MAPPING

    model_type = data.get("model_type")
    if not model_type:
        return f"{config / 'config.json'} has no model_type: transformers cannot tell which model it is"
    if model_type not in CONFIG_MAPPING:
        return (f"{config / 'config.json'}: model_type {model_type!r} is unknown to transformers {transformers.__version__} "
                f"(a newer transformers, or actor_rollout_ref.model.trust_remote_code=true for a model with its own code)")
    try:  # what AutoConfig.from_pretrained does with the file, without its hub and cache machinery
        CONFIG_MAPPING[model_type].from_dict(data)
    except Exception as e:  # transformers raises ValueError / TypeError / KeyError for configs it cannot build
        return f"{config / 'config.json'} does not load as a {model_type} config ({_first_line(e)})"
    return None


# ------------------------------------------------------------------------------------------ checkpoints


def _torch_file_problem(path: Path, root: Path) -> str | None:
    name = path.relative_to(root).as_posix()
    size = path.stat().st_size
    if size == 0:
        return f"{name} is empty"
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; its directory is at the end
        return f"{name} is truncated or not a torch file ({size} bytes, no zip directory at its end)"
    return None


def _ranks_problem(actor: Path, only: str | None = None) -> str | None:
    """The per-rank ``<kind>_world_size_<ws>_rank_<r>.pt`` files of ``actor`` (of kind ``only``, or every kind):
    model shards present, and every rank's file of each kind and world size there."""
    kinds: dict[tuple[str, int], set[int]] = {}
    for f in sorted(actor.iterdir()):
        match = CHECKPOINT_FILE.match(f.name)
        if match and only in (None, match["kind"]):
            kinds.setdefault((match["kind"], int(match["ws"])), set()).add(int(match["rank"]))
    if not any(kind == "model" for kind, _ in kinds):
        return "actor/ holds no model_world_size_*_rank_*.pt (the model shards)"
    for (kind, ws), ranks in sorted(kinds.items()):
        absent = sorted(set(range(ws)) - ranks)
        if absent:
            return f"actor/{kind}_world_size_{ws}_rank_{absent[0]}.pt is missing"
    return None


def checkpoint_problem(step: Path) -> str | None:
    """Why verl cannot resume from the ``global_step_N`` directory ``step``, or None."""
    actor = step / "actor"
    if not actor.is_dir():
        return "no actor/ inside (not a verl checkpoint, or its save never started)"
    if not (actor / "fsdp_config.json").is_file():
        return "actor/fsdp_config.json is missing (the save was interrupted)"
    problem = _ranks_problem(actor)
    if problem:
        return problem
    files = [f for f in sorted(actor.glob("*.pt"))] + ([step / "data.pt"] if (step / "data.pt").exists() else [])
    for f in files:
        problem = _torch_file_problem(f, step)
        if problem:
            return problem
    return None


# ------------------------------------------------------------------------------------------ outputs


def output_dir_problem(path: str | os.PathLike) -> str | None:
    """Why a directory cannot be created (or written) at ``path``, or None; leaves nothing behind."""
    target = Path(os.path.abspath(os.path.expanduser(str(path))))
    probe = target
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a directory"
    try:
        made = tempfile.mkdtemp(prefix=".reweight-probe-", dir=probe)
    except OSError as e:
        why = e.strerror or type(e).__name__
        return ("is not writable" if probe == target else f"cannot be created: {probe} does not take new directories") + f" ({why})"
    shutil.rmtree(made, ignore_errors=True)
    return None


def output_file_problem(path: str | os.PathLike) -> str | None:
    """Why a file cannot be written at ``path`` (its directory made as needed), or None."""
    target = Path(os.path.abspath(os.path.expanduser(str(path))))
    if target.is_dir():
        return "a directory, expected a file path"
    return output_dir_problem(target.parent)


def require_output(value: str | os.PathLike | None, flag: str, kind: str = "file") -> None:
    """Refuse an output location (``kind`` ``file`` or ``dir``) that cannot be written, naming ``flag``:
    ``--out='/proc/x.jsonl': cannot be created: ...`` (a :class:`reweight.cli_errors.UsageError`, exit 2)."""
    from reweight.cli_errors import UsageError

    if value is None:
        return
    problem = output_file_problem(value) if kind == "file" else output_dir_problem(value)
    if problem:
        raise UsageError(f"{flag}={str(value)!r}: {problem}")


def model_shards_problem(actor: Path) -> str | None:
    """Why verl's model merger cannot export the actor checkpoint ``actor`` (its model shards only), or None."""
    problem = _ranks_problem(actor, only="model")
    if problem:
        return problem
    for s in sorted(actor.glob("model_world_size_*_rank_*.pt")):
        problem = _torch_file_problem(s, actor.parent)
        if problem:
            return problem
    return None
