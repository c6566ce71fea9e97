"""Support and entropy metrics of *The Invisible Leash* (Wu et al., arXiv 2507.14843) for a base / RL pair.

Empirical support, as the paper estimates it
---------------------------------------------
The paper calls a correct completion *in the empirical support* of a model when its probability
is above a small ε, and counts support at the level of **answers**: reasoning traces that reach the
same verified outcome form one equivalence class (its Section 3.1). It does not measure ε by
scoring sequences: it samples k completions per problem (k = 256 ... 8192) and takes a class as in
a model's support when that model **produced it at least once in its k samples**. Its Appendix C.4
gives the meaning of the budget: a class never seen in k independent samples has probability at
most ε_k = −ln(ζ)/k with confidence 1 − ζ (k = 8192, ζ = 0.05: ε ≈ 3.7e-4). The whole-sequence
probability of a long trace is far below any such ε, so thresholding teacher-forced sequence
probabilities would put almost nothing in either support; the sampled estimate does not have that
problem, and needs no model at all.

Here every problem has one ground truth, so all its correct samples share one verified outcome
and the problem holds exactly one correct answer class. The unit counted is therefore the problem,
as in the paper's tables (P + E + S + O is the number of problems of a benchmark, and the base's
pass@k is (P + S)/N). With budget k (default: the smallest sample count; the first k samples of
each problem are used when a results file holds more):

* preservation P: some correct sample among the first k of the base **and** of the RL model;
* shrinkage S: of the base only;
* expansion E: of the RL model only;
* out of support O (``neither``): of neither model.

Ratios (pooled counts of a benchmark, or of all problems for ``average``): SRR = P/(P+S),
NDR = E/(P+E), SDS = 2·SRR·NDR/(SRR+NDR), NSCR = (E−S)/(P+E+S). A ratio whose denominator is 0 is
undefined and reported as NaN (``null`` in JSON), never silently 0 or 1; SDS is NaN when SRR or NDR
is, and 0 when both are 0 (the harmonic mean's limit).

Entropies (nats), on the same first k samples of each model:

* answer-level: entropy of the distribution of final answers over equivalence classes. Two answers
  are in one class when the data source's checker (:func:`reweight.evaluation.scoring.get_checker`:
  ``math_verify`` for math sources, exact integers for the synthetic task) accepts one as the other
  (either direction) or their whitespace-free texts are equal; a class is represented by its first
  member, so ``1/2``, ``0.5`` and ``\\frac{1}{2}`` are one answer. Samples without a final answer
  (no ``\\boxed{}``, no ``Answer:`` line, e.g. truncated) form one ``<no answer>`` class, as the
  paper's NA answer does;
* token-level: mean next-token entropy along the model's own samples, by teacher forcing (mean
  over the tokens of a sample, then over samples, then over problems). This is the only part that
  needs the models; it is optional.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from reweight.evaluation.records import AppendLog, EvalInputError, ProblemResult, read_results
from reweight.evaluation.sampling import render_prompt, tokenizer_vocab_limit
from reweight.evaluation.scoring import get_checker, last_boxed
from reweight.models import eos_token_ids, load_model, load_shared_tokenizer

ESTIMATOR = "answer_found_within_k"  # the paper's sampled estimate of empirical support (module doc)
DEFAULT_ZETA = 0.05
NO_ANSWER = "<no answer>"
_ANSWER_LINE = re.compile(r"(?i)answer\s*:\s*([^\n]+)")


def implied_epsilon(k: int, zeta: float = DEFAULT_ZETA) -> float:
    """ε_k = −ln(ζ)/k: a class unseen in k samples has probability ≤ ε_k with confidence 1 − ζ."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not 0 < zeta < 1:
        raise ValueError(f"zeta must be in (0, 1), got {zeta}")
    return -math.log(zeta) / k


# ---------------------------------------------------------------------------------------------- support


@dataclass(frozen=True)
class SupportCounts:
    preservation: int
    shrinkage: int
    expansion: int
    neither: int = 0


def found_within(correct: Sequence[bool], k: int) -> bool:
    """Whether any of the first ``k`` samples is correct (the class is in the empirical support)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(correct) < k:
        raise EvalInputError(f"budget k={k} exceeds the {len(correct)} samples of a problem (k > n)")
    return any(bool(c) for c in correct[:k])


def classify_problem(base_correct: Sequence[bool], rl_correct: Sequence[bool], k: int) -> SupportCounts:
    """One problem's P / S / E / neither (exactly one of them is 1) from its correctness lists, shape (n,) each."""
    in_base, in_rl = found_within(base_correct, k), found_within(rl_correct, k)
    return SupportCounts(
        preservation=int(in_base and in_rl),
        shrinkage=int(in_base and not in_rl),
        expansion=int(in_rl and not in_base),
        neither=int(not in_base and not in_rl),
    )


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def support_ratios(counts: SupportCounts) -> dict[str, float]:
    """SRR, NDR, SDS, NSCR of one set of counts (NaN where a denominator is 0; see module doc)."""
    p, s, e = counts.preservation, counts.shrinkage, counts.expansion
    srr, ndr = _ratio(p, p + s), _ratio(e, p + e)
    if math.isnan(srr) or math.isnan(ndr):
        sds = math.nan
    elif srr + ndr == 0:
        sds = 0.0
    else:
        sds = 2 * srr * ndr / (srr + ndr)
    return {"SRR": srr, "NDR": ndr, "SDS": sds, "NSCR": _ratio(e - s, p + e + s)}


# ---------------------------------------------------------------------------------------------- answers


def extract_final_answer(response: str) -> str | None:
    """The last ``\\boxed{}`` content, else the last ``Answer:`` line (DAPO's format), else None."""
    boxed = last_boxed(response)
    if boxed is not None:
        return boxed
    lines = _ANSWER_LINE.findall(response)
    if not lines:
        return None
    return lines[-1].strip() or None


def final_answers(result: ProblemResult, k: int | None = None) -> list[str | None]:
    """Final answers of the first ``k`` samples: the recorded ``answers`` entry, re-extracted where it is missing."""
    stored = result.answers or []
    texts = result.responses[:k] if k is not None else result.responses
    return [stored[i] if i < len(stored) and stored[i] is not None else extract_final_answer(t) for i, t in enumerate(texts)]


def _text_key(answer: str) -> str:
    return "".join(answer.split())


_INTEGER = re.compile(r"[+-]?\d+")


def _checker_equivalent(data_source: str | None, a: str, b: str) -> bool:
    """The data source's checker, either direction (cached per checker and pair: a re-registered checker is used)."""
    return _check_either_way(get_checker(data_source), a, b)


@functools.lru_cache(maxsize=1 << 16)
def _check_either_way(check: Callable[[str, str], bool], a: str, b: str) -> bool:
    return bool(check(f"\\boxed{{{a}}}", b) or check(f"\\boxed{{{b}}}", a))


def answers_equivalent(a: str | None, b: str | None, data_source: str | None = None) -> bool:
    """Whether two final answers are one mathematical answer for ``data_source``'s checker (None = no answer).

    Equal whitespace-free texts are one answer without a checker call, and two plain integers are
    compared by value (what both the integer and the ``math_verify`` checker conclude, the latter at
    milliseconds per pair); other pairs go to the checker, either direction, cached per (checker, pair).
    """
    if a is None or b is None:
        return a is None and b is None
    ka, kb = _text_key(a), _text_key(b)
    if ka == kb:
        return True
    if _INTEGER.fullmatch(ka) and _INTEGER.fullmatch(kb):
        return int(ka) == int(kb)
    return _checker_equivalent(data_source, *sorted((a.strip(), b.strip())))


def answer_classes(answers: Sequence[str | None], data_source: str | None = None) -> list[int]:
    """Equivalence-class label of each answer, shape (m,); labels 0, 1, ... in order of first appearance.

    An answer joins the first class whose representative (its first member) it is equivalent to
    (:func:`answers_equivalent`); answers with equal whitespace-free text share a label without a
    checker call. O(m · classes) checker calls at most.
    """
    reps: list[str | None] = []
    by_text: dict[str | None, int] = {}
    labels = []
    for a in answers:
        key = None if a is None else _text_key(a)
        if key not in by_text:
            match = next((j for j, rep in enumerate(reps) if answers_equivalent(rep, a, data_source)), None)
            if match is None:
                match = len(reps)
                reps.append(a)
            by_text[key] = match
        labels.append(by_text[key])
    return labels


def answer_entropy(answers: Sequence[str | None], data_source: str | None = None) -> float:
    """Entropy (nats) of the empirical distribution of answer classes; 0 when all answers are one class."""
    if not answers:
        raise ValueError("answer entropy of zero samples")
    freq = np.array(list(Counter(answer_classes(answers, data_source)).values()), dtype=np.float64)
    p = freq / freq.sum()
    return float(-(p * np.log(p)).sum())


# ---------------------------------------------------------------------------------------------- token entropy


@dataclass
class SequenceScore:
    """Teacher-forced statistics of one response: sum of token log-probs, token count, mean entropy."""

    logprob: float
    num_tokens: int
    mean_entropy: float


@torch.no_grad()
def score_sequences(
    model,
    tokenizer,
    prompts: Sequence[str],
    responses: Sequence[str],
    append_eos: Sequence[bool],
    batch_size: int = 8,
    device: str | torch.device | None = None,
) -> list[SequenceScore]:
    """Teacher-forced log-prob and entropy of each response after its prompt text, one per pair.

    Batches are right-padded (no position shift); logits are taken in float32 with vocabulary rows
    beyond the tokenizer masked. Memory: one batch of (B, T, V) logits.
    """
    if not (len(prompts) == len(responses) == len(append_eos)):
        raise ValueError("prompts, responses and append_eos must have the same length")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    eos = eos_token_ids(tokenizer, model, required=True)[0] if tokenizer.eos_token_id is None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    vocab_limit = tokenizer_vocab_limit(tokenizer)
    encoded = []
    for prompt, response, add_eos in zip(prompts, responses, append_eos):
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + ([eos] if add_eos else [])
        if not p_ids:
            raise EvalInputError("empty prompt: teacher forcing needs at least one prompt token")
        encoded.append((p_ids, r_ids))
    out: list[SequenceScore] = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(len(p) + len(r) for p, r in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, (p, r) in enumerate(chunk):
            ids[i, : len(p) + len(r)] = torch.tensor(p + r)
            mask[i, : len(p) + len(r)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        if logits.shape[-1] > vocab_limit:
            logits[..., vocab_limit:] = float("-inf")
        logp = torch.log_softmax(logits[:, :-1], dim=-1)  # position t predicts token t+1
        for i, (p, r) in enumerate(chunk):
            if not r:
                out.append(SequenceScore(0.0, 0, math.nan))
                continue
            pos = torch.arange(len(p) - 1, len(p) + len(r) - 1, device=logp.device)
            rows = logp[i, pos]  # (len(r), V)
            target = torch.tensor(r, device=logp.device)
            token_logp = rows.gather(-1, target[:, None])[:, 0]
            ent = torch.special.entr(rows.exp()).sum(-1)
            out.append(SequenceScore(float(token_logp.sum()), len(r), float(ent.mean())))
    return out


def _stopped(reason: str | None) -> bool:
    return reason != "length"


def own_token_entropy(model, tokenizer, result: ProblemResult, k: int, batch_size: int = 8, use_chat_template: bool = True) -> float:
    """Mean next-token entropy of ``model`` along its own first ``k`` samples of one problem (NaN if all are empty).

    EOS is appended to a sample that stopped (finish reason other than ``length``).
    """
    if not result.prompt:
        raise EvalInputError(f"problem {result.uid!r}: no prompt in the results; token entropy needs the prompt text")
    prompt_text = render_prompt(tokenizer, result.prompt, use_chat_template)
    texts = result.responses[:k]
    reasons = (result.finish_reasons or [None] * result.n)[:k]
    scores = score_sequences(model, tokenizer, [prompt_text] * len(texts), texts, [_stopped(x) for x in reasons], batch_size)
    ent = [s.mean_entropy for s in scores if s.num_tokens > 0]
    return float(np.mean(ent)) if ent else math.nan


TokenEntropyFn = Callable[[str, ProblemResult, int], float]  # (which: "base" | "rl", own result, k) -> entropy


def token_entropy_scorer(base_model, rl_model, tokenizer, batch_size: int = 8, use_chat_template: bool = True) -> TokenEntropyFn:
    """A :data:`TokenEntropyFn` scoring each model on its own samples (the two models share ``tokenizer``)."""
    models = {"base": base_model, "rl": rl_model}

    def score(which: str, result: ProblemResult, k: int) -> float:
        return own_token_entropy(models[which], tokenizer, result, k, batch_size, use_chat_template)

    return score


# ---------------------------------------------------------------------------------------------- pair


@dataclass
class ProblemSupport:
    """Support and entropy metrics of one problem at budget k (P/S/E/neither: exactly one is 1)."""

    uid: str
    data_source: str
    preservation: int
    shrinkage: int
    expansion: int
    neither: int
    num_correct_base: int  # correct samples among the first k
    num_correct_rl: int
    num_answers_base: int  # answer classes among the first k samples
    num_answers_rl: int
    answer_entropy_base: float
    answer_entropy_rl: float
    token_entropy_base: float  # NaN when token entropy was not computed
    token_entropy_rl: float


def match_problems(base: Sequence[ProblemResult], rl: Sequence[ProblemResult]) -> list[tuple[ProblemResult, ProblemResult]]:
    """(base, rl) result pairs of the problems both hold, in the base order; refuses different ground truths."""
    rl_by_uid = {r.uid: r for r in rl}
    pairs = [(b, rl_by_uid[b.uid]) for b in base if b.uid in rl_by_uid]
    if not pairs:
        raise EvalInputError("the base and RL results share no problem uid; evaluate both on the same dataset")
    for b, r in pairs:
        if b.ground_truth != r.ground_truth:
            raise EvalInputError(f"problem {b.uid!r}: base and RL results have different ground truths")
    return pairs


def resolve_k(pairs: Sequence[tuple[ProblemResult, ProblemResult]], k: int | None = None) -> int:
    """The budget: ``k``, or the smallest sample count over both sets; k < 1 or k > n is refused."""
    n_min = min(min(b.n, r.n) for b, r in pairs)
    if k is None:
        k = n_min
    if k < 1:
        raise EvalInputError(f"support budget k must be >= 1, got k={k}")
    if k > n_min:
        raise EvalInputError(f"support budget k={k} exceeds the samples per problem (n={n_min}); k > n")
    return k


def problem_support(base: ProblemResult, rl: ProblemResult, k: int, token_entropy: TokenEntropyFn | None = None) -> ProblemSupport:
    """The metrics of one problem from its two results at budget ``k`` (token entropy NaN without a scorer)."""
    counts = classify_problem(base.correct, rl.correct, k)
    ans_b, ans_r = final_answers(base, k), final_answers(rl, k)
    return ProblemSupport(
        uid=base.uid,
        data_source=base.data_source,
        **asdict(counts),
        num_correct_base=int(sum(bool(c) for c in base.correct[:k])),
        num_correct_rl=int(sum(bool(c) for c in rl.correct[:k])),
        num_answers_base=len(set(answer_classes(ans_b, base.data_source))),
        num_answers_rl=len(set(answer_classes(ans_r, rl.data_source))),
        answer_entropy_base=answer_entropy(ans_b, base.data_source),
        answer_entropy_rl=answer_entropy(ans_r, rl.data_source),
        token_entropy_base=token_entropy("base", base, k) if token_entropy else math.nan,
        token_entropy_rl=token_entropy("rl", rl, k) if token_entropy else math.nan,
    )


def pair_support(
    base_results: Sequence[ProblemResult],
    rl_results: Sequence[ProblemResult],
    k: int | None = None,
    token_entropy: TokenEntropyFn | None = None,
    progress: bool = True,
    done: Mapping[str, ProblemSupport] | None = None,
    on_row: Callable[[ProblemSupport], None] | None = None,
) -> tuple[list[ProblemSupport], int]:
    """Per-problem support metrics for the problems both result sets hold; returns (rows, k).

    ``k`` defaults to the smallest sample count over both sets (k above it is refused).
    ``token_entropy``: e.g. :func:`token_entropy_scorer`; None leaves token entropies NaN and
    needs no model. ``done``: rows already computed (resume), kept as they are; ``on_row`` is
    called with each newly computed row (to append it to a file).
    """
    from tqdm.auto import tqdm

    pairs = match_problems(base_results, rl_results)
    k = resolve_k(pairs, k)
    if token_entropy is not None:
        for b, r in pairs:
            if not b.prompt or not r.prompt:
                raise EvalInputError(f"problem {b.uid!r}: no prompt in the results; token entropy needs the prompt text")
    done = done or {}
    rows = []
    for b, r in tqdm(pairs, desc="support metrics", disable=not progress, unit="prob"):
        if b.uid in done:
            rows.append(done[b.uid])
            continue
        rows.append(problem_support(b, r, k, token_entropy))
        if on_row is not None:
            on_row(rows[-1])
    return rows, k


_MEAN_FIELDS = (
    "num_answers_base", "num_answers_rl", "answer_entropy_base", "answer_entropy_rl", "token_entropy_base", "token_entropy_rl",
)


def aggregate_support(rows: Sequence[ProblemSupport]) -> dict[str, dict[str, float]]:
    """Per benchmark (``data_source``) and over all problems (``"average"``): pooled counts, their ratios,
    the fraction of problems in each model's support (pass@k from the first k samples) and mean entropies."""
    if not rows:
        raise ValueError("no support rows to aggregate")
    groups: dict[str, list[ProblemSupport]] = {}
    for row in rows:
        groups.setdefault(row.data_source, []).append(row)
    groups["average"] = list(rows)
    out: dict[str, dict[str, float]] = {}
    for name, members in groups.items():
        total = SupportCounts(
            sum(m.preservation for m in members),
            sum(m.shrinkage for m in members),
            sum(m.expansion for m in members),
            sum(m.neither for m in members),
        )
        n = len(members)
        entry: dict[str, float] = {
            "num_problems": n,
            **asdict(total),
            **support_ratios(total),
            "pass_at_k_base": (total.preservation + total.shrinkage) / n,
            "pass_at_k_rl": (total.preservation + total.expansion) / n,
        }
        for metric in _MEAN_FIELDS:
            vals = np.array([getattr(m, metric) for m in members], dtype=np.float64)
            entry[metric] = float(np.nanmean(vals)) if np.any(~np.isnan(vals)) else math.nan
        out[name] = entry
    return out


# ---------------------------------------------------------------------------------------------- files


def support_file(
    base_results: str,
    rl_results: str,
    out: str,
    *,
    k: int | None = None,
    zeta: float = DEFAULT_ZETA,
    base_model: str | None = None,
    rl_model: str | None = None,
    token_entropy: bool = True,
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int = 8,
    use_chat_template: bool = True,
    progress: bool = True,
) -> dict:
    """Support metrics of two results files (``reweight-eval sample/score``), written as JSON to ``out``; resumable.

    Per-problem rows are appended to ``OUT.rows.jsonl`` as they are computed (with the settings that
    made them: a rerun with other settings is refused) and reused by a rerun. Token entropy
    (``token_entropy``) needs ``base_model`` and ``rl_model``, which must share a tokenizer
    (:func:`reweight.models.load_shared_tokenizer`); they are loaded only when a row is still missing.
    Returns what is written: estimator, k, ζ, ε_k (:func:`implied_epsilon`), the inputs, the number of
    problems in only one file (``num_unmatched``, left out), :func:`aggregate_support` and the rows.
    Bad settings raise :class:`EvalInputError` before any model is loaded.
    """
    from reweight.evaluation.report import dumps_json
    from reweight.io import write_text_atomic

    if token_entropy and not (base_model and rl_model):
        raise EvalInputError("token entropy needs --base and --rl; pass --no-token-entropy for the support numbers alone")
    if not 0 < zeta < 1:
        raise EvalInputError(f"--zeta {zeta}: must be in (0, 1)")
    _, base = read_results(base_results)
    _, rl = read_results(rl_results)
    pairs = match_problems(base, rl)
    k = resolve_k(pairs, k)
    meta = {
        "estimator": ESTIMATOR, "base_results": str(base_results), "rl_results": str(rl_results), "k": k,
        "token_entropy": token_entropy, "base_model": base_model if token_entropy else None,
        "rl_model": rl_model if token_entropy else None, "chat_template": use_chat_template,
    }
    rows_path = str(out) + ".rows.jsonl"
    log = AppendLog(rows_path, meta, "support rows file")
    try:
        done = {uid: ProblemSupport(**rec) for uid, rec in log.records.items()}
    except TypeError:
        raise EvalInputError(
            f"support rows file {rows_path!r} was written by an older support estimator; remove it or use another --out"
        ) from None
    scorer = None
    if token_entropy and any(b.uid not in done for b, _ in pairs):
        tokenizer = load_shared_tokenizer(base_model, rl_model)
        scorer = token_entropy_scorer(
            load_model(base_model, device, dtype), load_model(rl_model, device, dtype), tokenizer, batch_size, use_chat_template
        )
    rows, k = pair_support(base, rl, k=k, token_entropy=scorer, progress=progress, done=done,
                           on_row=lambda row: log.append(asdict(row)))
    result = {
        "estimator": ESTIMATOR, "k": k, "zeta": zeta, "epsilon": implied_epsilon(k, zeta),
        "base": base_model or str(base_results), "rl": rl_model or str(rl_results),
        "base_results": str(base_results), "rl_results": str(rl_results), "token_entropy": token_entropy,
        "num_unmatched": len(base) + len(rl) - 2 * len(rows),
        "aggregate": aggregate_support(rows), "problems": [asdict(r) for r in rows],
    }
    write_text_atomic(out, dumps_json(result))
    return result
