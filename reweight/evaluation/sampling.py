"""n responses per problem: HF ``generate``, vLLM (optional), or a file of responses; scored, resumable.

Every source produces :class:`~reweight.evaluation.records.ProblemResult` rows appended to a
results file by :func:`sample_dataset` / :func:`score_response_file`. Problems are grouped into
batches at fixed positions of the dataset and each batch is seeded from (seed, batch index), so a
resumed run draws the same samples for the remaining batches as an uninterrupted one would.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from reweight.evaluation.records import (
    DEFAULT_DATA_SOURCE_KEY,
    GROUP_KEYS,
    RESPONSE_KEYS,
    EvalInputError,
    EvalProblem,
    ProblemResult,
    ResultsWriter,
    first_present,
    get_key,
    iter_batches,
    load_table,
    require_key,
    resolve_answer_key,
)
from reweight.evaluation.scoring import DEFAULT_SCORER, check_scorer, is_correct, last_boxed
from reweight.models import eos_token_ids, pick_dtype, resolve_model_path

Sample = tuple[str, str | None]  # (response text, finish reason: "stop" | "length" | None)


def render_prompt(tokenizer, prompt: list[dict[str, str]] | str, use_chat_template: bool = True) -> str:
    """Prompt text fed to the model: the chat template with the generation prompt.

    A plain-string prompt is wrapped as one user message when the tokenizer has a chat template
    (the decoding CLI does the same); without a template the message contents are joined by newlines.
    """
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return "\n".join(m["content"] for m in messages)


def score_problem(problem: EvalProblem, samples: Sequence[Sample], scorer: str = DEFAULT_SCORER) -> ProblemResult:
    """Check every sample of one problem by ``scorer`` (see :data:`reweight.evaluation.scoring.SCORERS`)."""
    responses = [text for text, _ in samples]
    return ProblemResult(
        uid=problem.uid,
        data_source=problem.data_source,
        ground_truth=problem.ground_truth,
        prompt=problem.prompt,
        responses=responses,
        correct=[is_correct(r, problem.ground_truth, problem.data_source, scorer) for r in responses],
        answers=[last_boxed(r) for r in responses],
        finish_reasons=[reason for _, reason in samples],
        prompt_sha=problem.prompt_sha,
    )


class Sampler(Protocol):
    """Draws ``n`` samples for each prompt text; returns one list of (text, finish reason) per prompt."""

    def sample(self, prompts: Sequence[str], n: int, seed: int) -> list[list[Sample]]: ...


@dataclass
class SamplingConfig:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 1024
    batch_size: int = 64  # sequences per forward batch (HF) / prompts per request batch (vLLM)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n (samples per problem) must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def tokenizer_vocab_limit(tokenizer) -> int:
    """Number of real tokens; model vocab rows beyond it (embedding padding) are never sampled or scored."""
    return len(tokenizer)


class _MaskPaddedVocab:
    """Logits processor: -inf on vocabulary rows that the tokenizer does not have."""

    def __init__(self, vocab_limit: int):
        self.vocab_limit = vocab_limit

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if scores.shape[-1] > self.vocab_limit:
            scores = scores.clone()
            scores[:, self.vocab_limit :] = float("-inf")
        return scores


class HFSampler:
    """Batched sampling with ``model.generate`` (left padding, KV cache). For CPU and small models.

    Sampling uses exactly ``config`` (temperature, top-p, no top-k), not the sampling defaults a
    checkpoint's ``generation_config.json`` may ship (e.g. top_k / repetition_penalty).

    Each batch holds ``batch_size`` sequences: prompts repeated ``n`` times, chunked. Seeded per
    call through a forked RNG, so the global RNG is untouched.
    """

    def __init__(self, model, tokenizer, config: SamplingConfig, device: str | torch.device | None = None):
        from transformers import LogitsProcessorList

        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.stop_ids = eos_token_ids(tokenizer, model, required=True)  # reweight.models' one EOS rule
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.processors = LogitsProcessorList([_MaskPaddedVocab(tokenizer_vocab_limit(tokenizer))])

    @torch.no_grad()
    def _generate(self, texts: Sequence[str]) -> list[Sample]:
        cfg = self.config
        tok = self.tokenizer
        old_side = tok.padding_side
        tok.padding_side = "left"
        try:
            enc = tok(list(texts), return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        finally:
            tok.padding_side = old_side
        greedy = cfg.temperature == 0
        kwargs: dict[str, Any] = dict(do_sample=not greedy, max_new_tokens=cfg.max_new_tokens)
        if not greedy:
            kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=0)
        # The checkpoint's generation_config.json may carry sampling defaults (top_k, repetition
        # penalty, ...) that generate() would silently apply; sample from exactly the settings given.
        from transformers import GenerationConfig

        checkpoint_config = self.model.generation_config
        self.model.generation_config = GenerationConfig()
        try:
            out = self.model.generate(
                **enc,
                **kwargs,
                eos_token_id=self.stop_ids,
                pad_token_id=self.pad_id,
                logits_processor=self.processors,
            )
        finally:
            self.model.generation_config = checkpoint_config
        new = out[:, enc["input_ids"].shape[1] :].tolist()
        samples = []
        for ids in new:
            stop_at = next((i for i, t in enumerate(ids) if t in self.stop_ids), None)
            body = ids if stop_at is None else ids[:stop_at]
            samples.append((tok.decode(body, skip_special_tokens=True), "length" if stop_at is None else "stop"))
        return samples

    def sample(self, prompts: Sequence[str], n: int, seed: int) -> list[list[Sample]]:
        flat = [p for p in prompts for _ in range(n)]
        devices = [self.device] if self.device.type == "cuda" else []
        out: list[Sample] = []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for start in range(0, len(flat), self.config.batch_size):
                out.extend(self._generate(flat[start : start + self.config.batch_size]))
        return [out[i * n : (i + 1) * n] for i in range(len(prompts))]


class VLLMSampler:
    """Sampling with vLLM (GPU clusters). vLLM is an optional dependency: a clear error without it."""

    def __init__(self, model_path: str, config: SamplingConfig, **llm_kwargs: Any):
        """``model_path``: any path :func:`reweight.models.resolve_model_path` takes; ``dtype``: auto|bf16|fp16|fp32."""
        try:
            from vllm import LLM, SamplingParams
        except ImportError as err:
            raise ImportError(
                "backend 'vllm' was requested but vllm is not installed "
                "(the GPU install: pip install -c launch/constraints/gpu.txt -e '.[gpu,test]'; or use --backend hf)"
            ) from err
        self._params_cls = SamplingParams
        self.config = config
        if "dtype" in llm_kwargs:  # our names (auto: bf16 on CUDA) to vLLM's, which runs on CUDA
            llm_kwargs["dtype"] = str(pick_dtype(llm_kwargs["dtype"], "cuda")).removeprefix("torch.")
        self.llm = LLM(model=resolve_model_path(model_path), seed=config.seed, **llm_kwargs)

    def sample(self, prompts: Sequence[str], n: int, seed: int) -> list[list[Sample]]:
        cfg = self.config
        params = self._params_cls(
            n=n, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_new_tokens, seed=seed
        )
        outputs = self.llm.generate(list(prompts), params, use_tqdm=False)
        return [[(o.text, o.finish_reason) for o in req.outputs] for req in outputs]


def batch_seed(seed: int, batch_index: int) -> int:
    """Seed of one fixed-position batch (independent of which batches are already done)."""
    return (seed * 1_000_003 + batch_index) % (2**63 - 1)


def sample_dataset(
    problems: Sequence[EvalProblem],
    sampler: Sampler,
    tokenizer,
    writer: ResultsWriter,
    n: int,
    problems_per_batch: int,
    seed: int = 0,
    progress: bool = True,
    use_chat_template: bool = True,
    scorer: str = DEFAULT_SCORER,
) -> list[ProblemResult]:
    """Sample, score and append every problem not yet in ``writer``; return all results in dataset order.

    Batches are fixed positions of ``problems`` (batch b = problems [b·m, (b+1)·m)); only the
    unfinished problems of a batch are sampled, seeded by :func:`batch_seed`.
    """
    from tqdm.auto import tqdm

    check_scorer(scorer)
    if not problems:
        raise EvalInputError("no problems to sample")
    uids = [p.uid for p in problems]
    if len(set(uids)) != len(uids):
        raise EvalInputError("duplicate problem uids in the dataset")
    for p in problems:
        writer.check_prompt(p)
    todo = sum(p.uid not in writer.done for p in problems)
    bar = tqdm(total=len(problems), initial=len(problems) - todo, desc="sampling problems", disable=not progress, unit="prob")
    for b, batch in iter_batches(problems, problems_per_batch):
        pending = [p for p in batch if p.uid not in writer.done]
        if not pending:
            continue
        texts = [render_prompt(tokenizer, p.prompt, use_chat_template) for p in pending]
        samples = sampler.sample(texts, n, batch_seed(seed, b))
        for problem, s in zip(pending, samples):
            writer.append(score_problem(problem, s, scorer))
            bar.update(1)
    bar.close()
    return [writer.done[u] for u in uids]


# ---------------------------------------------------------------------------------------------- files


def load_response_file(
    path: str | os.PathLike,
    response_key: str | None = None,
    group_key: str | None = None,
    answer_key: str | None = None,
    data_source_key: str = DEFAULT_DATA_SOURCE_KEY,
    prompt_key: str = "prompt",
    default_data_source: str | None = None,
    problems: Sequence[EvalProblem] | None = None,
) -> list[tuple[EvalProblem, list[Sample]]]:
    """Problems and their responses from a file of generations (e.g. ``reweight-decode`` output).

    Two layouts, detected from the first row:

    * wide: one row per problem, ``response_key`` holds a list of responses;
    * long: one row per response, ``response_key`` holds a string and ``group_key`` says which
      problem it belongs to (rows of a group keep their file order).

    ``response_key`` None: the first of :data:`RESPONSE_KEYS` present; ``group_key`` None (long
    layout): the first of :data:`GROUP_KEYS` present. Ground truth, data source and prompt come
    from the file; when it has no ground-truth column, ``problems`` (the dataset) supplies them,
    the group key being the problem's row position in the dataset (an int) or its uid.
    All keys are checked before anything is scored; errors name the key and the file.
    """
    rows = load_table(path)
    response_key = response_key or first_present(rows[0], RESPONSE_KEYS)
    if response_key is None:
        raise EvalInputError(
            f"{str(path)!r}: no response column; expected one of {', '.join(RESPONSE_KEYS)} "
            f"(columns: {', '.join(sorted(rows[0]))}); pass --response-key"
        )
    require_key(rows, response_key, path, "response")
    wide = isinstance(get_key(rows[0], response_key), list)
    if not wide:
        group_key = group_key or first_present(rows[0], GROUP_KEYS)
        if group_key is None:
            raise EvalInputError(
                f"{str(path)!r}: one response per row but no problem-id column; expected one of "
                f"{', '.join(GROUP_KEYS)}; pass --group-key"
            )
        require_key(rows, group_key, path, "problem-id")
    file_has_answers = answer_key is not None or any(
        first_present(rows[0], [k]) for k in ("reward_model.ground_truth", "ground_truth", "answer", "solution")
    )
    by_uid = {p.uid: p for p in problems} if problems else {}
    if file_has_answers:
        answer_key = answer_key or resolve_answer_key(rows, path)
        require_key(rows, answer_key, path, "ground-truth")
    elif problems is None:
        raise EvalInputError(
            f"{str(path)!r} has no ground-truth column (tried reward_model.ground_truth, ground_truth, answer, "
            "solution) and no dataset was given to take it from; pass --answer-key or --data"
        )

    def dataset_problem(gid: Any, where: str) -> EvalProblem:
        if isinstance(gid, (int, float)) and not isinstance(gid, bool) and problems is not None:
            idx = int(gid)
            if 0 <= idx < len(problems):
                return problems[idx]
        if str(gid) in by_uid:
            return by_uid[str(gid)]
        raise EvalInputError(f"{str(path)!r} {where}: problem id {gid!r} is not in the dataset")

    if wide and group_key is None:
        group_key = first_present(rows[0], GROUP_KEYS)  # may stay None: the row position is the id
    groups: dict[str, tuple[EvalProblem, list[Sample]]] = {}
    for i, row in enumerate(rows):
        where = f"row {i}"
        gid: Any = get_key(row, group_key, i) if group_key else i
        if file_has_answers:
            source = get_key(row, data_source_key, None)
            source = str(source) if source is not None else (default_data_source or "math")
            prompt = get_key(row, prompt_key, None)
            uid = gid if isinstance(gid, str) and "/" in gid else f"{source}/{gid}"
            problem = EvalProblem(uid, prompt if prompt is not None else "", str(get_key(row, answer_key)), source)
        else:
            problem = dataset_problem(gid, where)
        value = get_key(row, response_key)
        texts = list(value) if wide else [value]
        if not all(isinstance(t, str) for t in texts):
            raise EvalInputError(f"{str(path)!r} {where}: responses in {response_key!r} must be strings")
        if wide:
            reasons = get_key(row, "finish_reasons", None)
            reasons = list(reasons) if isinstance(reasons, list) and len(reasons) == len(texts) else [None] * len(texts)
        else:
            reasons = [get_key(row, "finish_reason", None)]
        entry = groups.setdefault(problem.uid, (problem, []))
        if entry[0].ground_truth != problem.ground_truth:
            raise EvalInputError(f"{str(path)!r} {where}: problem {problem.uid!r} has two different ground truths")
        entry[1].extend(zip(texts, reasons))
    return list(groups.values())


def score_response_file(
    pairs: Sequence[tuple[EvalProblem, list[Sample]]], writer: ResultsWriter, progress: bool = True,
    scorer: str = DEFAULT_SCORER,
) -> list[ProblemResult]:
    """Score problems read by :func:`load_response_file` into ``writer`` (finished uids skipped)."""
    from tqdm.auto import tqdm

    out = []
    for problem, samples in tqdm(pairs, desc="scoring problems", disable=not progress, unit="prob"):
        if problem.uid not in writer.done:
            writer.append(score_problem(problem, samples, scorer))
        out.append(writer.done[problem.uid])
    return out
