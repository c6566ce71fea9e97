"""Shared fixtures: tiny local models and tokenizer (no hub access), GPU skipping."""

from __future__ import annotations

import pytest
import torch

# Tests use tiny models, for which thread synchronisation costs more than it gains (measured ~15x slower
# forwards with 2 threads on the shared 2-core machine); Ray workers and subprocesses set their own.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE tokenizer trained locally, with a Qwen-style chat template."""
    from reweight.tiny import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_pair(tiny_tokenizer):
    """(tokenizer, base_model, rl_model): two differently seeded tiny Qwen2 models sharing the tokenizer."""
    from reweight.tiny import build_model

    tok = tiny_tokenizer
    kw = dict(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return tok, build_model(len(tok), seed=0, **kw), build_model(len(tok), seed=1, **kw)


@pytest.fixture(scope="session")
def tiny_pair_dirs(tiny_pair, tmp_path_factory):
    """The tiny pair saved as two HF checkpoint directories: (base_dir, rl_dir)."""
    from reweight.tiny import save_tiny

    tok, base, rl = tiny_pair
    root = tmp_path_factory.mktemp("tiny_pair")
    return str(save_tiny(root / "base", base, tok)), str(save_tiny(root / "rl", rl, tok))
