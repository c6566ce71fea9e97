"""Shared fixtures: tiny local models and tokenizer (no hub access), GPU skipping."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

# Tests use tiny models, for which thread synchronisation costs more than it gains (measured ~15x slower
# forwards with 2 threads on the shared 2-core machine); Ray workers and subprocesses set their own.
torch.set_num_threads(1)


# Files whose tests train through Ray or share its session fixtures (the e2e assets, the smoke study): one
# xdist worker runs them all, so each fixture is built once; every other file is a unit of its own (its module
# fixtures are built once too). test_launch_ray.py is not one of them: its two-node cluster has a private
# `--temp-dir`, where `ray start` records its address, so a training run's plain `ray.init()` on the other
# worker never attaches to it; on its own worker it shortens the training worker's path by ~3 min (it builds
# the e2e assets there again, ~20 s). A scheduler of ours rather than xdist's `--dist loadgroup`, whose group
# marks pytest-xdist 3.8 does not apply under pytest 9 (measured: marked tests still spread over both workers).
TRAINING_FILES = ("test_e2e_cpu.py", "test_study.py", "test_paired.py", "test_vllm_cpu.py")


def pytest_xdist_make_scheduler(config, log):
    from pathlib import Path

    from xdist.scheduler import LoadScopeScheduling

    class ByFile(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "training" if Path(path).name in TRAINING_FILES else path

    return ByFile(config, log)


# The device the GPU-marked tests run on: CUDA. ``REWEIGHT_TEST_DEVICE=cpu`` runs their numerics on the CPU
# instead (bf16 included; the tests that need a real GPU still skip), which is how a bug planted in the code is
# shown to fail their tolerances on a machine without a GPU (docs/gpu.md).
TEST_DEVICE = os.environ.get("REWEIGHT_TEST_DEVICE", "cuda")


def needs_real_cuda() -> None:
    """Skip a GPU-marked test that cannot run with :data:`TEST_DEVICE` swapped to the CPU."""
    if TEST_DEVICE != "cuda":
        pytest.skip(f"needs a CUDA GPU itself (REWEIGHT_TEST_DEVICE={TEST_DEVICE})")


def pytest_collection_modifyitems(config, items):
    # the training files first (a stable sort): their worker starts on them at once, the other takes the rest
    items[:] = sorted(items, key=lambda item: item.path.name not in TRAINING_FILES)
    if torch.cuda.is_available() or TEST_DEVICE != "cuda":
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# What reweight-train's CPU preparation exports for a real run (reweight.cpu.resources.WORKER_ENV): a test that
# runs it in process must not make later tests (a dry run of a GPU config) look like the CPU platform.
_PROCESS_ENV = ("VERL_PLATFORM", "OMP_NUM_THREADS", "TQ_NUM_THREADS", "TOKENIZERS_PARALLELISM")


@pytest.fixture(autouse=True)
def _keep_process_env():
    saved = {k: os.environ.get(k) for k in _PROCESS_ENV}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


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


# The end-to-end tests' embedded assets: small enough to build in ~15-30 s (single-digit addition is
# learnt, partly, in ~100 SFT steps), and training settings that keep a verl step to seconds on 2 cores.
E2E_RECIPE = dict(
    levels=(1,),
    n_train=512,
    n_val=64,
    sft_eval_every=20,
    sft_eval_problems=64,
    target_low=0.2,
    target_high=0.7,
    target_greedy=0.0,
    sft_answer_noise=0.0,
)
E2E_TRAIN_OVERRIDES = (
    "data.train_batch_size=4",
    "actor_rollout_ref.actor.ppo_mini_batch_size=4",
    "actor_rollout_ref.rollout.n=4",
)


@pytest.fixture(scope="session")
def e2e_assets(tmp_path_factory):
    """The embedded model and data built from :data:`E2E_RECIPE`: in the session's temporary directory, or in
    ``REWEIGHT_CACHE`` when the caller set one (to reuse the build across sessions). The variable is set for the
    build only: later tests see the environment they were started with."""
    from reweight.embedded import Recipe, ensure_built

    saved = os.environ.get("REWEIGHT_CACHE")
    os.environ["REWEIGHT_CACHE"] = saved or str(tmp_path_factory.mktemp("cache"))
    try:
        return ensure_built(Recipe(**E2E_RECIPE), log=lambda *_: None)
    finally:
        if saved is None:
            del os.environ["REWEIGHT_CACHE"]


def e2e_asset_overrides(assets) -> list[str]:
    """Hydra overrides that point the embedded config at ``assets`` (no default-asset build)."""
    return [
        f"actor_rollout_ref.model.path={assets / 'model'}",
        f"data.train_files={assets / 'train.parquet'}",
        f"data.val_files={assets / 'val.parquet'}",
    ]


@pytest.fixture(scope="session")
def smoke_study(e2e_assets, tmp_path_factory):
    """``reweight-study --smoke`` run once per session on the e2e assets: (out_dir, console output, seconds).

    Its training runs are real verl runs (2 steps each, with checkpoints), so the e2e tests also use them.
    """
    out = tmp_path_factory.mktemp("study") / "smoke"
    cmd = [
        sys.executable, "-m", "reweight.study.cli", "--smoke", "--out", str(out),
        "--test-data", str(e2e_assets / "test.parquet"), *e2e_asset_overrides(e2e_assets), *E2E_TRAIN_OVERRIDES,
    ]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, stdin=subprocess.DEVNULL)
    seconds = time.time() - t0
    console = proc.stdout + proc.stderr
    (out.parent / "console.log").write_text(console)
    assert proc.returncode == 0, f"the smoke study failed:\n{console[-4000:]}"
    return out, console, seconds


def minimal_run_files(directory) -> list[str]:
    """Overrides naming the smallest inputs reweight-train's pre-flight accepts (reweight.file_checks), written
    under ``directory``: a one-row parquet per split with the columns verl reads, and a model directory with a
    config.json transformers loads, a complete (one-tensor) model.safetensors and a tokenizer.json; plus an
    output directory that does not exist yet. For dry runs and launch checks: nothing trains on them."""
    import json
    from pathlib import Path

    import pandas as pd
    from safetensors.torch import save_file

    directory = Path(directory)
    model = directory / "model"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text(json.dumps({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}))
    save_file({"lm_head.weight": torch.zeros(1, 1)}, str(model / "model.safetensors"))
    (model / "tokenizer.json").write_text("{}")
    row = {"data_source": "minimal", "prompt": [[{"role": "user", "content": "1+1?"}]], "ability": "math",
           "reward_model": [{"style": "rule", "ground_truth": "2"}]}
    for name in ("train", "val"):
        pd.DataFrame(row).to_parquet(directory / f"{name}.parquet")
    return [f"actor_rollout_ref.model.path={model}", f"data.train_files={directory / 'train.parquet'}",
            f"data.val_files={directory / 'val.parquet'}", f"trainer.default_local_dir={directory / 'ckpt'}"]


def expensive_work_fails(monkeypatch) -> None:
    """Tripwires on everything a refusal must come before: Ray, loading a model or tokenizer, the embedded build."""
    import ray
    import transformers

    import reweight.embedded

    def tripwire(what):
        def fail(*args, **kwargs):
            raise AssertionError(f"{what} was called on bad input")

        return fail

    monkeypatch.setattr(ray, "init", tripwire("ray.init"))
    for cls in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM, transformers.AutoConfig):
        monkeypatch.setattr(cls, "from_pretrained", tripwire(f"{cls.__name__}.from_pretrained"))
    monkeypatch.setattr(reweight.embedded, "ensure_built", tripwire("the embedded build"))
