"""Loading the model pair: tokenizer agreement, vocabulary checks, device and dtype choice.

Everything here that can fail on bad input (a missing checkpoint, tokenizers that differ, a model whose
vocabulary is smaller than the tokenizer's) is checked from tokenizers and configs, before any weights load.
"""

from __future__ import annotations

import torch


class TokenizerMismatchError(ValueError):
    """The two models do not share a tokenizer, so their token-level probabilities are not comparable."""


def pick_device(device: str = "auto") -> torch.device:
    """``auto``: the first CUDA GPU when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but no CUDA GPU is available")
    return dev


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 weights on GPU, fp32 on CPU (the log-softmax is fp32 either way)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not known; choose one of {['auto', *DTYPES]}")
    return DTYPES[dtype]


def load_tokenizer(path: str):
    """``AutoTokenizer`` from an HF hub id or a local directory, with an error naming ``path`` on failure."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"cannot load a tokenizer from {path!r}: {e}") from e


def _special_tokens(tok) -> dict[str, str | None]:
    return {k: getattr(tok, k, None) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}


def check_same_tokenizer(tok_base, tok_rl, base_name: str, rl_name: str) -> None:
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
            + ". Δlog p compares the two models token by token, so both must use the same tokenizer."
        )


def check_model_vocab(path: str, vocab_limit: int, role: str) -> None:
    """From the config only: the model's vocabulary must cover the tokenizer's ``vocab_limit`` ids."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"cannot load the {role} model's config from {path!r}: {e}") from e
    size = getattr(config, "vocab_size", None) or getattr(config.get_text_config(), "vocab_size", None)
    if size is not None and size < vocab_limit:
        raise ValueError(f"the {role} model {path!r} has vocab_size={size} < the tokenizer's {vocab_limit} tokens")


def load_model(path: str, device: torch.device, dtype: torch.dtype):
    """``AutoModelForCausalLM`` in eval mode on ``device`` with ``dtype`` weights."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.to(device).eval()
