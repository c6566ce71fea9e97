"""Loading models and tokenizers: the one place, with one rule for each choice.

Every tool that takes a model (``reweight-eval``, ``reweight-analyze``, ``reweight-decode``, the study)
loads it through this module, so all of them accept the same kinds of path and make the same choices:

**Model paths** (:func:`resolve_model_path`). A path may name

* a Hugging Face directory (it holds ``config.json``, or ``tokenizer_config.json`` for a tokenizer alone):
  used as is;
* a verl FSDP checkpoint: a step directory ``.../global_step_N`` (holding ``actor/``), its ``actor/``
  directory, or an experiment directory (verl's ``trainer.default_local_dir``, holding
  ``latest_checkpointed_iteration.txt`` and/or ``global_step_N`` directories), which means its latest
  step: the step named by verl's tracker file, else the highest ``global_step_N`` whose ``actor/`` is
  complete. If the actor was saved with ``checkpoint.save_contents`` including ``hf_model``, its
  ``actor/huggingface`` directory already holds the weights (full precision) and is used. Otherwise
  the checkpoint is exported once with verl's own FSDP model merger (which writes bf16 weights) into
  ``actor/hf_export``, written atomically (a temporary directory renamed into place, under a file
  lock so that concurrent callers export once) and reused while the checkpoint's shard files are
  unchanged;
* anything else that does not exist: a Hugging Face hub id (``org/name`` or ``name``), passed on to
  ``from_pretrained``. A path that looks local (it starts with ``/``, ``.`` or ``~``, or has more than
  one ``/``) and does not exist raises ``FileNotFoundError`` without contacting the hub.

**Device** (:func:`pick_device`): ``auto`` (or ``None``) is the first CUDA GPU when present, else the CPU.

**Dtype** (:func:`pick_dtype`): ``--dtype auto|bf16|fp16|fp32``; ``auto`` is bf16 on CUDA, fp32 on the
CPU (where bf16 matmuls are slow and fp16 ones unsupported). Log-probabilities are computed in fp32
by the callers either way.

**EOS / stop ids** (:func:`eos_token_ids`): the union of the tokenizer's ``eos_token_id`` and, for every
model given, its ``config.eos_token_id`` and ``generation_config.eos_token_id`` (each an int or a list).

**Tokenizer compatibility** (:func:`check_same_tokenizer`): two models are compared token by token
only if their tokenizers agree on the vocabulary (token → id, added tokens included), its size, and
the special tokens (bos, eos, pad, unk).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import torch

from reweight.io import write_json_atomic

# ------------------------------------------------------------------------------------------ device, dtype

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_CHOICES = ("auto", *DTYPES)


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` / ``None``: the first CUDA GPU when present, else CPU. A CUDA device without a GPU is refused."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was requested but no CUDA GPU is available")
    return dev


def pick_dtype(dtype: str | torch.dtype | None, device: str | torch.device) -> torch.dtype:
    """Weights dtype: ``auto`` / ``None`` is bf16 on CUDA and fp32 elsewhere; else one of ``bf16 fp16 fp32``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not known; choose one of {list(DTYPE_CHOICES)}")
    return DTYPES[dtype]


# ------------------------------------------------------------------------------------------ model paths

TRACKER_FILE = "latest_checkpointed_iteration.txt"  # verl's RayPPOTrainer._save_checkpoint writes it
STEP_DIR = re.compile(r"global_step_(\d+)")
EXPORT_DIR = "hf_export"  # beside verl's files in global_step_N/actor/
EXPORT_MARKER = "reweight_export.json"  # in the export: the checkpoint files it was made from
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
_EXPECTED = (
    "expected a Hugging Face directory (with config.json or tokenizer_config.json) or a verl FSDP checkpoint: a global_step_N "
    "directory holding actor/, or an experiment directory holding latest_checkpointed_iteration.txt or "
    "global_step_N directories"
)


HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def model_path_problem(path: str) -> str | None:
    """Why ``path`` cannot be a model, or None: existing local path, URI, or hub id ``org/name``.

    A missing path that looks like a hub id is accepted without contacting the hub (its loader reports
    a bad id); one whose first component is an existing local directory (``ckpt/model`` next to a
    ``ckpt/`` folder) is a missing local path.
    """
    text = str(path)
    if not text.strip():
        return "empty model path"
    if "://" in text:  # embedded://, hdfs://, s3://...: resolved by their own loaders
        return None
    local = Path(text).expanduser()
    if local.exists():
        return None
    if HUB_ID.match(text) and not Path(text.split("/", 1)[0]).is_dir():
        return None
    return "no such file or directory (and not a Hugging Face hub id of the form org/name)"


def _is_hf_dir(directory: Path) -> bool:
    """A Hugging Face model (``config.json``) or tokenizer-only (``tokenizer_config.json``) directory."""
    return (directory / "config.json").is_file() or (directory / "tokenizer_config.json").is_file()


def _has_weights(directory: Path) -> bool:
    return any((directory / name).is_file() and (directory / name).stat().st_size > 0 for name in _WEIGHT_FILES)


def _is_actor_dir(directory: Path) -> bool:
    """A verl FSDP actor checkpoint: rank 0 writes ``fsdp_config.json`` after its model shard."""
    return (directory / "fsdp_config.json").is_file()


def tracked_step(experiment: str | os.PathLike) -> int | None:
    """The step verl's tracker file in an experiment directory names (``latest_checkpointed_iteration.txt``);
    None when there is no such file or it holds no step number."""
    try:
        text = (Path(experiment) / TRACKER_FILE).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def latest_step_dir(experiment: Path) -> Path:
    """The latest ``global_step_N`` of an experiment directory: verl's tracker file first, else the highest
    ``N`` whose ``actor/`` is complete. ``ValueError`` / ``FileNotFoundError`` naming the directory otherwise."""
    tracker = experiment / TRACKER_FILE
    if tracker.is_file():
        text = tracker.read_text().strip()
        if not text.isdigit():
            raise ValueError(f"{str(tracker)!r}: expected a step number, got {text!r}")
        step = experiment / f"global_step_{int(text)}"
        if not step.is_dir():
            raise FileNotFoundError(f"{str(tracker)!r} names step {int(text)}, but {str(step)!r} does not exist")
        return step
    steps = [d for d in experiment.iterdir() if STEP_DIR.fullmatch(d.name) and _is_actor_dir(d / "actor")]
    if not steps:
        raise ValueError(f"model path {str(experiment)!r} is neither an HF model nor a verl checkpoint; {_EXPECTED}")
    return max(steps, key=lambda d: int(STEP_DIR.fullmatch(d.name).group(1)))


def _actor_dir(path: Path) -> Path | None:
    """The verl actor checkpoint directory ``path`` stands for, or None when it is no verl checkpoint."""
    if _is_actor_dir(path):
        return path
    if path.name == "huggingface" and _is_actor_dir(path.parent):  # verl's config/tokenizer folder, no weights
        return path.parent
    if (path / "actor").is_dir():
        step = path
    elif (path / TRACKER_FILE).is_file() or any(STEP_DIR.fullmatch(d.name) for d in path.iterdir() if d.is_dir()):
        step = latest_step_dir(path)
    else:
        return None
    actor = step / "actor"
    if not _is_actor_dir(actor):
        raise ValueError(
            f"{str(actor)!r} is not a complete verl FSDP checkpoint (no fsdp_config.json): "
            "the save was interrupted, or it is not an FSDP actor checkpoint"
        )
    return actor


def resolve_model_path(path: str | os.PathLike) -> str:
    """A path ``from_pretrained`` can load: an HF directory, a hub id, or a verl checkpoint's HF export.

    See the module docstring for what each kind of path means; a verl checkpoint without HF weights is
    exported here (once; see :func:`export_checkpoint`).
    """
    text = str(path)
    local = Path(os.path.expanduser(text))
    if not local.exists():
        problem = model_path_problem(text)
        if problem:
            raise FileNotFoundError(f"model path {text!r}: {problem}")
        return text  # a hub id such as Qwen/Qwen2.5-Math-7B
    if not local.is_dir():
        raise ValueError(f"model path {text!r} is a file; {_EXPECTED}")
    if _is_hf_dir(local) and (_has_weights(local) or not _is_actor_dir(local.parent)):
        return str(local)
    actor = _actor_dir(local)
    if actor is None:
        raise ValueError(f"model path {text!r} is neither an HF model nor a verl checkpoint; {_EXPECTED}")
    if _has_weights(actor / "huggingface"):  # saved with checkpoint.save_contents including hf_model
        return str(actor / "huggingface")
    return str(export_checkpoint(actor))


# ------------------------------------------------------------------------------------------ export


def _checkpoint_fingerprint(actor: Path) -> dict[str, list[int]]:
    """(size, mtime in ns) of each file the export is made from: the model shards and verl's configs."""
    files = sorted(actor.glob("model_world_size_*_rank_*.pt")) + [actor / "fsdp_config.json", actor / "huggingface" / "config.json"]
    return {f.relative_to(actor).as_posix(): [f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file()}


def _export_is_current(export: Path, actor: Path) -> bool:
    marker = export / EXPORT_MARKER
    if not (marker.is_file() and _has_weights(export)):
        return False
    try:
        return json.loads(marker.read_text()).get("source") == _checkpoint_fingerprint(actor)
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _exclusive_lock(path: Path):
    """An exclusive ``flock`` on ``path`` (created if needed), released on exit or when the process dies."""
    import fcntl

    try:
        handle = open(path, "a+")
    except OSError as e:
        raise PermissionError(f"cannot export the verl checkpoint beside it: {e}") from e
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _merge(actor: Path, target: Path, log) -> None:
    """verl's FSDP model merger, in process (``python -m verl.model_merger merge --backend fsdp``)."""
    from verl.model_merger.base_model_merger import ModelMergerConfig
    from verl.model_merger.fsdp_model_merger import FSDPModelMerger

    config = ModelMergerConfig(
        operation="merge",
        backend="fsdp",
        local_dir=str(actor),
        target_dir=str(target),
        hf_model_config_path=str(actor / "huggingface"),
    )
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        merger = FSDPModelMerger(config)
        merger.merge_and_save()
        merger.cleanup()


def export_checkpoint(actor: str | os.PathLike) -> Path:
    """Export a verl FSDP actor checkpoint to ``actor/hf_export`` (an HF directory) unless a current export is there.

    The export is built in a temporary sibling directory and renamed into place, under an exclusive lock
    on ``actor/hf_export.lock``, so concurrent callers export once and a killed export leaves only a
    temporary directory (removed by the next export, never used). An export whose recorded shard files
    differ from the checkpoint's (the step was saved again) is replaced. verl's output goes to
    ``actor/hf_export.log``; one line on stderr says that an export runs.
    """
    from reweight.file_checks import model_shards_problem

    actor = Path(actor)
    export = actor / EXPORT_DIR
    if _export_is_current(export, actor):
        return export
    problem = model_shards_problem(actor)
    if problem:  # the merger would fail inside torch.load with a traceback
        raise ValueError(f"cannot export the verl checkpoint {str(actor.parent)!r}: {problem}")
    with _exclusive_lock(actor / f"{EXPORT_DIR}.lock"):
        if _export_is_current(export, actor):  # another process exported while we waited
            return export
        for stale in actor.glob(f"{EXPORT_DIR}.tmp-*"):  # left by a killed export (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = actor / f"{EXPORT_DIR}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        log_path = actor / f"{EXPORT_DIR}.log"
        print(f"[reweight] exporting verl checkpoint {actor} to an HF model in {export} (verl model_merger; log: {log_path})",
              file=sys.stderr, flush=True)
        try:
            tmp.mkdir()
            with open(log_path, "w") as log:
                try:
                    _merge(actor, tmp, log)
                except Exception as e:
                    raise RuntimeError(f"verl's model merger failed on {str(actor)!r}: {e!r}; its output is in {log_path}") from e
            write_json_atomic(tmp / EXPORT_MARKER, {"source": _checkpoint_fingerprint(actor), "verl": _verl_version()}, indent=1)
            if export.exists():  # a stale export of an earlier save of this step
                shutil.rmtree(export)
            os.replace(tmp, export)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return export


def _verl_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("verl")
    except PackageNotFoundError:
        return None


# ------------------------------------------------------------------------------------------ loading


def load_tokenizer(path: str | os.PathLike):
    """``AutoTokenizer`` for any model path (see :func:`resolve_model_path`); ``FileNotFoundError`` naming ``path``."""
    from transformers import AutoTokenizer

    resolved = resolve_model_path(path)
    try:
        return AutoTokenizer.from_pretrained(resolved)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"cannot load a tokenizer from {str(path)!r}: {e}") from e


def load_model(path: str | os.PathLike, device: str | torch.device | None = "auto",
               dtype: str | torch.dtype | None = "auto", **from_pretrained: Any):
    """``AutoModelForCausalLM`` for any model path, in eval mode on :func:`pick_device` with :func:`pick_dtype` weights."""
    from transformers import AutoModelForCausalLM

    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    resolved = resolve_model_path(path)
    if Path(resolved).is_dir():  # an emptied or cut weights file: one line naming it, not safetensors' traceback
        from reweight.file_checks import weights_problem

        problem = weights_problem(Path(resolved))
        if problem:
            raise ValueError(f"cannot load a model from {str(path)!r}: {problem}")
    try:
        model = AutoModelForCausalLM.from_pretrained(resolved, dtype=torch_dtype, **from_pretrained)
    except OSError as e:
        raise FileNotFoundError(f"cannot load a model from {str(path)!r}: {e}") from e
    return model.to(dev).eval()


def check_model_vocab(path: str | os.PathLike, vocab_limit: int, role: str) -> None:
    """From the config only: the model's vocabulary must cover the tokenizer's ``vocab_limit`` ids."""
    from transformers import AutoConfig

    resolved = resolve_model_path(path)
    try:
        config = AutoConfig.from_pretrained(resolved)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"cannot load the {role} model's config from {str(path)!r}: {e}") from e
    size = getattr(config, "vocab_size", None) or getattr(config.get_text_config(), "vocab_size", None)
    if size is not None and size < vocab_limit:
        raise ValueError(f"the {role} model {str(path)!r} has vocab_size={size} < the tokenizer's {vocab_limit} tokens")


# ------------------------------------------------------------------------------------------ EOS, tokenizers


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def eos_token_ids(tokenizer, *models, required: bool = False) -> list[int]:
    """Sorted stop ids: the tokenizer's ``eos_token_id`` ∪ each model's ``config`` and ``generation_config`` EOS.

    ``required``: raise ``ValueError`` when there is none (generation needs at least one stop token).
    """
    ids = set(_ids(getattr(tokenizer, "eos_token_id", None)))
    for model in models:
        ids.update(_ids(getattr(getattr(model, "config", None), "eos_token_id", None)))
        ids.update(_ids(getattr(getattr(model, "generation_config", None), "eos_token_id", None)))
    if required and not ids:
        raise ValueError("no EOS token: the tokenizer has no eos_token_id and the model config / generation_config none")
    return sorted(ids)


class TokenizerMismatchError(ValueError):
    """Two models do not share a tokenizer, so their token-level probabilities are not comparable."""


def _special_tokens(tok) -> dict[str, str | None]:
    return {k: getattr(tok, k, None) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}


def check_same_tokenizer(tok_base, tok_rl, base_name: str = "base", rl_name: str = "rl") -> None:
    """Raise :class:`TokenizerMismatchError` naming both models unless the tokenizers map text to the same ids.

    Compared: the vocabulary (token → id, added tokens included), its size, and the special tokens.
    """
    problems = []
    if len(tok_base) != len(tok_rl):
        problems.append(f"vocabulary sizes {len(tok_base)} vs {len(tok_rl)}")
    vb, vr = tok_base.get_vocab(), tok_rl.get_vocab()
    if vb != vr:
        differ = sorted(t for t in set(vb) | set(vr) if vb.get(t) != vr.get(t))
        examples = ", ".join(f"{t!r}: {vb.get(t)} vs {vr.get(t)}" for t in differ[:3])
        problems.append(f"{len(differ)} tokens map to different ids (e.g. {examples})")
    sb, sr = _special_tokens(tok_base), _special_tokens(tok_rl)
    if sb != sr:
        problems.append(f"special tokens {sb} vs {sr}")
    if problems:
        raise TokenizerMismatchError(
            f"the base model {base_name!r} and the RL model {rl_name!r} do not share a tokenizer: "
            + "; ".join(problems)
            + ". Their probabilities are compared token by token, so the two models must share a tokenizer."
        )


def load_shared_tokenizer(base: str | os.PathLike, rl: str | os.PathLike,
                          base_name: str | None = None, rl_name: str | None = None):
    """The base model's tokenizer, after :func:`check_same_tokenizer` against the RL model's (names default to the paths)."""
    tok_base, tok_rl = load_tokenizer(base), load_tokenizer(rl)
    check_same_tokenizer(tok_base, tok_rl, base_name or str(base), rl_name or str(rl))
    return tok_base


__all__ = [
    "DTYPES", "DTYPE_CHOICES", "TokenizerMismatchError", "check_model_vocab", "check_same_tokenizer",
    "eos_token_ids", "export_checkpoint", "latest_step_dir", "load_model", "load_shared_tokenizer",
    "load_tokenizer", "pick_device", "pick_dtype", "resolve_model_path",
]
