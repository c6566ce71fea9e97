"""Tiny local models: a tokenizer trained here and a randomly initialised Qwen2-architecture model.

No hub access is needed: the tokenizer is a byte-level BPE trained on text generated locally
(the synthetic arithmetic task plus filler), with a Qwen-style chat template, and the model is a
``Qwen2ForCausalLM`` with a few small layers. Tests, benchmarks and the embedded default use
these; they load through the same ``AutoTokenizer`` / ``AutoModelForCausalLM`` paths as a real
checkpoint once saved with :func:`save_tiny`.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
PAD_TOKEN, EOS_TOKEN = "<|endoftext|>", "<|im_end|>"

# Qwen's template, reduced to what the tiny models need: system/user/assistant turns.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _corpus(n: int, seed: int) -> list[str]:
    from reweight.data.synthetic import make_problems

    rng = random.Random(seed)
    words = "the a of to and is in that it for on with as answer final compute put what sum product".split()
    lines = []
    for p in make_problems(n, seed):
        lines.append(f"<|im_start|>user\n{p.prompt}<|im_end|>\n<|im_start|>assistant\n{p.solution}<|im_end|>\n")
        lines.append(" ".join(rng.choice(words) for _ in range(12)))
    return lines


def build_tokenizer(vocab_size: int = 512, seed: int = 0):
    """Train a byte-level BPE tokenizer locally and wrap it as a ``PreTrainedTokenizerFast``.

    ``vocab_size`` is the target size of the BPE vocabulary (special tokens included; the
    trainer may stop below it when the corpus has no more merges).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(2000, seed), trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=["<|im_start|>"],
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )
    hf.padding_side = "left"
    return hf


def build_model(
    vocab_size: int,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 4096,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    tie_word_embeddings: bool = True,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
):
    """A randomly initialised ``Qwen2ForCausalLM``; reproducible from ``seed``.

    ``vocab_size`` may exceed the tokenizer's size, as real Qwen checkpoints do (padded
    embedding rows); consumers must mask those rows.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=None,
        rope_theta=10000.0,
        attn_implementation="sdpa",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    return model.to(dtype).eval()


def save_tiny(path: str | os.PathLike, model, tokenizer) -> Path:
    """Save a model and tokenizer as an HF checkpoint directory (atomically: tmp dir + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if path.exists():
        raise FileExistsError(f"{path} already exists; refusing to overwrite a checkpoint")
    os.replace(tmp, path)
    return path
