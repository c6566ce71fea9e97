"""The embedded default: everything ``reweight-train`` needs with no arguments, built locally.

``configs/embedded.yaml`` points the model and data at ``embedded://`` paths; :func:`prepare` (called
by ``reweight-train`` before Ray starts) builds the assets on first use, caches them, and replaces
every ``embedded://NAME`` in the config with the cached file:

- ``embedded://train.parquet``, ``embedded://val.parquet``, ``embedded://test.parquet``: the synthetic
  arithmetic task (:mod:`reweight.data.synthetic`; by default the chain task, level 5, whose solutions
  write every step) in verl's RL parquet schema; the three splits hold disjoint sets of questions (the
  test split, ``n_test`` distinct questions, is what ``reweight-study`` evaluates on);
- ``embedded://model``: a tiny Qwen2-architecture model with a tokenizer trained here
  (:mod:`reweight.tiny`), supervised-fine-tuned on reference solutions in which each written result
  slips to a near miss with probability ``sft_answer_noise`` -- so that it knows the procedure but
  samples slips -- until its sampled (temperature 1) accuracy on held-out problems sits in
  :data:`TARGET_ACCURACY` and its greedy accuracy reaches ``target_greedy``: RL needs groups with mixed
  outcomes, and room to sharpen. The accuracies reached (sampled and greedy) are recorded in ``meta.json``.

``reweight.embedded.task`` (default ``chain``) names the recipe (:data:`RECIPES`).

The cache lives in ``${REWEIGHT_CACHE:-~/.cache/verl-reweight}/embedded/<recipe hash>/``; it is
written to a temporary directory and renamed into place (atomic), under a file lock so concurrent
first runs build it once. Override any ``embedded://`` key to use your own model or data.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SCHEME = "embedded://"
ASSETS = ("model", "train.parquet", "val.parquet", "test.parquet")
TARGET_ACCURACY = (0.1, 0.6)


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the built assets (its hash names the cache directory).

    The defaults are the ``chain`` task (:data:`RECIPES`): three-operation chains of one-digit
    additions and subtractions (level 5 of :mod:`reweight.data.synthetic`), whose reference solution
    writes every intermediate step (about 26 response tokens).
    """

    levels: tuple[int, ...] = (5,)
    n_train: int = 2048
    n_val: int = 256
    # Distinct test questions (levels 1 and 3 only: every test question of the split instead)
    n_test: int = 256
    data_seed: int = 1234
    val_seed: int = 4321
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    model_seed: int = 0
    sft_seed: int = 0
    sft_batch_size: int = 32
    sft_lr: float = 3e-3
    sft_max_steps: int = 1500
    sft_eval_every: int = 100
    sft_eval_problems: int = 128
    target_greedy: float = 0.8  # ... and greedy accuracy at least this: room for RL to sharpen
    # Probability that each result written in an SFT target is replaced by a near miss (±1..3; a chain
    # carries the slip to its answer): the model learns a hedged distribution whose mode is right, like a
    # base model that "knows" more than it samples -- sampled accuracy well below greedy, which RL can
    # sharpen within a few steps, and low-probability tokens inside the reasoning, not only at the answer.
    sft_answer_noise: float = 0.2
    sft_threads: int = 1  # one thread: on a busy 2-core machine two threads contend (10x slower steps)
    target_low: float = TARGET_ACCURACY[0]  # sampled (T=1) held-out accuracy band that stops SFT
    target_high: float = TARGET_ACCURACY[1]
    max_new_tokens: int = 40  # response budget of the warm-up's accuracy checks (the config's data.max_response_length)
    version: int = 5

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


# The embedded tasks, by name (``reweight.embedded.task``). ``chain`` is the default; ``arith`` is the
# earlier answer-only task (``12+7=19. \\boxed{19}``, levels 1 and 3), on which 20 DAPO steps gained only
# about 3 points: kept for comparison. Its responses are short: use it with data.max_response_length=24.
RECIPES: dict[str, Recipe] = {
    "chain": Recipe(),
    "arith": Recipe(
        levels=(1, 3), sft_eval_every=50, target_greedy=0.3, sft_answer_noise=0.5, max_new_tokens=24, version=4
    ),
}


def recipe_for(cfg) -> Recipe:
    """The recipe a config names (``reweight.embedded.task``; default ``chain``); unknown names raise
    ``ValueError`` naming the key."""
    from omegaconf import OmegaConf

    name = OmegaConf.select(cfg, "reweight.embedded.task", default="chain")
    if name not in RECIPES:
        raise ValueError(f"reweight.embedded.task={name!r}: choose one of {sorted(RECIPES)}")
    return RECIPES[name]


def cache_root() -> Path:
    return Path(os.environ.get("REWEIGHT_CACHE", "~/.cache/verl-reweight")).expanduser() / "embedded"


def asset_dir(recipe: Recipe | None = None) -> Path:
    return cache_root() / (recipe or Recipe()).key()


# ------------------------------------------------------------------------------------------ data


def _chat_prompt_ids(tok, prompt: str) -> list[int]:
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def held_out_problems(recipe: Recipe, split: str) -> list:
    """The validation (``val``: ``n_val`` draws) or test problems (``test``: ``n_test`` distinct questions;
    for levels 1 and 3, every question of the split once)."""
    from reweight.data.synthetic import make_split_problems, split_questions

    if split == "test" and set(recipe.levels) <= {1, 3}:
        return split_questions(recipe.levels, "test")
    if split == "test":
        return make_split_problems(recipe.n_test, recipe.val_seed + 7, recipe.levels, split, unique=True)
    return make_split_problems(recipe.n_val, recipe.val_seed, recipe.levels, split)


def write_data(out: Path, recipe: Recipe) -> None:
    """Train / validation / test parquets in verl's RL schema, on disjoint sets of questions.

    The SFT warm-up (the stand-in for pre-training) sees the whole question space; RL trains on the
    ``train`` questions, validates on the ``val`` ones and the study evaluates on the ``test`` ones
    (:func:`reweight.data.synthetic.question_split`), so held-out numbers measure transfer to
    questions RL never saw.
    """
    import pandas as pd

    from reweight.data.synthetic import make_split_problems, to_verl_row

    train = make_split_problems(recipe.n_train, recipe.data_seed, recipe.levels, "train")
    for split, problems in (("train", train), ("val", held_out_problems(recipe, "val")), ("test", held_out_problems(recipe, "test"))):
        pd.DataFrame([to_verl_row(p, split, i) for i, p in enumerate(problems)]).to_parquet(out / f"{split}.parquet")


# ------------------------------------------------------------------------------------------ SFT


def sampled_accuracy(model, tok, problems, *, temperature: float = 1.0, max_tokens: int = 24, seed: int = 0) -> float:
    """Fraction of ``problems`` answered correctly, one sample each at ``temperature`` (0 = greedy)."""
    import torch

    from reweight.cpu.generation import SamplingSpec, generate_batch
    from reweight.data.synthetic import is_correct

    model.eval()
    gen = torch.Generator().manual_seed(seed)
    prompts = [_chat_prompt_ids(tok, p.prompt) for p in problems]
    specs = [SamplingSpec(max_tokens=max_tokens, temperature=temperature, logprobs=False) for _ in problems]
    outs = generate_batch(
        model, prompts, specs, eos_token_ids=[tok.eos_token_id], pad_token_id=tok.pad_token_id, generator=gen
    )
    texts = tok.batch_decode([o.token_ids for o in outs], skip_special_tokens=True)
    return sum(is_correct(t, p.answer) for t, p in zip(texts, problems)) / max(1, len(problems))


def _sft_target(problem, rng: random.Random, noise: float) -> str:
    """The warm-up target: the reference solution with each written result slipped with probability
    ``noise`` by a near miss (±1..3); a chain carries a slip through to its answer."""
    from reweight.data.synthetic import worked_solution

    if noise <= 0:
        return problem.solution
    return worked_solution(problem, slip=lambda: rng.choice((-3, -2, -1, 1, 2, 3)) if rng.random() < noise else 0)


def _sft_batch(tok, problems, eos: str, rng: random.Random | None = None, noise: float = 0.0):
    import torch

    rng = rng or random.Random(0)
    seqs, labels = [], []
    for p in problems:
        prompt = _chat_prompt_ids(tok, p.prompt)
        resp = tok(_sft_target(p, rng, noise) + eos, add_special_tokens=False)["input_ids"]
        seqs.append(prompt + resp)
        labels.append([-100] * len(prompt) + resp)
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)
    lab = torch.full((len(seqs), width), -100, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s, l) in enumerate(zip(seqs, labels)):
        ids[i, : len(s)] = torch.tensor(s)
        lab[i, : len(l)] = torch.tensor(l)
        mask[i, : len(s)] = 1
    return ids, mask, lab


def sft(model, tok, recipe: Recipe, log=print) -> dict[str, Any]:
    """Supervised warm-up on (noisy) reference solutions.

    Evaluates held-out accuracy every ``sft_eval_every`` steps, sampled (T=1) and greedy, and stops
    at the first evaluation where the sampled accuracy is inside ``[target_low, target_high]`` and
    the greedy one reaches ``target_greedy``; otherwise keeps the evaluated checkpoint with the best
    greedy accuracy whose sampled accuracy is in the band. Returns the accuracy history.
    """
    import copy

    import torch

    from reweight.data.synthetic import make_problems

    rng = random.Random(recipe.sft_seed)
    torch.manual_seed(recipe.sft_seed)
    train = make_problems(recipe.n_train, recipe.data_seed, recipe.levels)
    held_out = make_problems(recipe.sft_eval_problems, recipe.val_seed + 1, recipe.levels)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.sft_lr, weight_decay=0.0)
    history: list[tuple[int, float, float]] = []
    best: tuple[float, Any, float, float, int] = (-1.0, None, 0.0, 0.0, 0)  # greedy, state, sampled, greedy, step
    for step in range(1, recipe.sft_max_steps + 1):
        model.train()
        batch = rng.sample(train, recipe.sft_batch_size)
        ids, mask, lab = _sft_batch(tok, batch, tok.eos_token, rng, recipe.sft_answer_noise)
        loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % recipe.sft_eval_every == 0:
            sampled = sampled_accuracy(model, tok, held_out, max_tokens=recipe.max_new_tokens, seed=recipe.sft_seed + step)
            greedy = sampled_accuracy(model, tok, held_out, max_tokens=recipe.max_new_tokens, temperature=0.0)
            history.append((step, sampled, greedy))
            log(f"[embedded] sft step {step}: loss {loss.item():.3f}, held-out accuracy sampled {sampled:.3f} greedy {greedy:.3f}")
            in_band = recipe.target_low <= sampled <= recipe.target_high
            if in_band and greedy > best[0]:
                best = (greedy, copy.deepcopy(model.state_dict()), sampled, greedy, step)
            if in_band and greedy >= recipe.target_greedy:
                break
    if best[1] is not None:
        model.load_state_dict(best[1])
    model.eval()
    return {"sft_history": history, "sft_accuracy_sampled": best[2], "sft_accuracy_greedy": best[3], "sft_steps": best[4]}


# ------------------------------------------------------------------------------------------ build


def _placeholder_model():
    from reweight.tiny import build_model

    return build_model(16, hidden_size=8, num_layers=1, num_heads=1, num_kv_heads=1)


def build(out: Path, recipe: Recipe, log=print) -> dict[str, Any]:
    """Build every asset into ``out`` (a fresh directory); return the metadata written to meta.json."""
    import torch
    from transformers import AutoTokenizer

    from reweight.tiny import build_model, build_tokenizer, save_tiny

    t0 = time.time()
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.sft_threads)
    try:
        # Train against the tokenizer exactly as verl will load it (AutoTokenizer from the checkpoint
        # directory); it can split text differently from the in-memory object build_tokenizer() returns.
        save_tiny(out / "tokenizer", _placeholder_model(), build_tokenizer())
        tok = AutoTokenizer.from_pretrained(out / "tokenizer")
        shutil.rmtree(out / "tokenizer")
        model = build_model(
            len(tok),
            hidden_size=recipe.hidden_size,
            num_layers=recipe.num_layers,
            num_heads=recipe.num_heads,
            num_kv_heads=recipe.num_kv_heads,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            seed=recipe.model_seed,
        )
        info = sft(model, tok, recipe, log=log)
        val = held_out_problems(recipe, "val")
        info["base_val_accuracy_sampled"] = sampled_accuracy(model, tok, val, max_tokens=recipe.max_new_tokens, seed=7)
        info["base_val_accuracy_greedy"] = sampled_accuracy(model, tok, val, max_tokens=recipe.max_new_tokens, temperature=0.0)
        save_tiny(out / "model", model, tok)
        write_data(out, recipe)
    finally:
        torch.set_num_threads(threads)
    meta = {"recipe": asdict(recipe), "key": recipe.key(), "build_seconds": round(time.time() - t0, 1), **info}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def ensure_built(recipe: Recipe | None = None, log=print) -> Path:
    """The asset directory for ``recipe``, built (once, atomically, under a lock) if missing."""
    recipe = recipe or Recipe()
    final = asset_dir(recipe)
    if (final / "meta.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "meta.json").exists():  # another process built it while we waited
            return final
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        log(f"[embedded] building the embedded model and data in {final} (first use; cached afterwards)")
        try:
            meta = build(tmp, recipe, log=log)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log(
            f"[embedded] built in {meta['build_seconds']}s: base held-out accuracy "
            f"{meta['base_val_accuracy_sampled']:.3f} (sampled, T=1), {meta['base_val_accuracy_greedy']:.3f} (greedy)"
        )
    return final


def _embedded_keys(cfg) -> list[tuple[str, str]]:
    """(dotted key, value) of every string in ``cfg`` that starts with ``embedded://``.

    Values are read as written (OmegaConf's public ``to_container(resolve=False)``): an interpolation
    such as ``${actor_rollout_ref.model.path}`` is not resolved, so it follows its target once that is
    rewritten, and a missing (``???``) or unresolvable value is never touched.
    """
    from omegaconf import OmegaConf

    found: list[tuple[str, str]] = []

    def walk(node, prefix: str):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{prefix}{i}.")
        elif isinstance(node, str) and node.startswith(SCHEME):
            found.append((prefix[:-1], node))

    walk(OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False), "")
    return found


def prepare(cfg, recipe: Recipe | None = None, log=print) -> list[str]:
    """Build the assets if ``cfg`` uses any ``embedded://`` path and substitute the cached paths.

    Returns the keys that were rewritten; raises ``ValueError`` naming the key for an unknown asset.
    """
    from omegaconf import OmegaConf, open_dict

    keys = _embedded_keys(cfg)
    if not keys:
        return []
    for key, value in keys:
        name = value[len(SCHEME) :]
        if name not in ASSETS:
            raise ValueError(f"{key}={value!r}: unknown embedded asset {name!r}; known: {', '.join(ASSETS)}")
    root = ensure_built(recipe or recipe_for(cfg), log=log)
    with open_dict(cfg):
        for key, value in keys:
            OmegaConf.update(cfg, key, str(root / value[len(SCHEME) :]), merge=False)
        _fit_to_gpus(cfg, log)
    return [k for k, _ in keys]


def _fit_to_gpus(cfg, log=print) -> None:
    """On a machine with fewer GPUs than the embedded config's 2 ranks, train on the GPUs there are."""
    try:
        import torch

        gpus = torch.cuda.device_count()
    except Exception:  # pragma: no cover
        gpus = 0
    ranks = int(cfg.trainer.n_gpus_per_node)
    if 0 < gpus < ranks and int(cfg.trainer.nnodes) == 1:
        log(f"[embedded] {gpus} GPU(s) here: trainer.n_gpus_per_node {ranks} -> {gpus}")
        cfg.trainer.n_gpus_per_node = gpus
        tp = int(cfg.actor_rollout_ref.rollout.tensor_model_parallel_size)
        if gpus % tp:
            cfg.actor_rollout_ref.rollout.tensor_model_parallel_size = gpus
