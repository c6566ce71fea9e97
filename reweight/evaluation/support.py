"""Support and entropy metrics of *The Invisible Leash* (arXiv 2507.14843) for a base / RL model pair.

Per problem, the distinct correct completions sampled from either model (deduplicated by exact
response text) are scored by both models with teacher forcing; a completion is in a model's
empirical support when its sequence probability exceeds ε = −ln(ζ)/k (k samples per problem,
ζ = 0.05: a completion above ε is drawn at least once in k samples with probability ≳ 1 − ζ).

* preservation P: above ε under both models;
* shrinkage S: above ε under the base model only;
* expansion E: above ε under the RL model only;
* (completions above ε under neither are counted as ``neither`` and used in no ratio).

Ratios: SRR = P/(P+S), NDR = E/(P+E), SDS = 2·SRR·NDR/(SRR+NDR), NSCR = (E−S)/(P+E+S).

Zero denominators (documented choice): a ratio whose denominator is 0 is undefined and reported as
NaN (``null`` in JSON), never silently 0 or 1. SDS is NaN when SRR or NDR is NaN, and 0 when both
are 0 (the harmonic mean's limit). Per-benchmark values are computed from counts pooled over the
problems (micro); per-problem means ignore the undefined problems and report how many were defined.

Sequence probabilities are of the response tokens after the chat-templated prompt, the EOS token
included when the response stopped (finish reason ``stop`` or unknown), at temperature 1, with
vocabulary rows beyond the tokenizer masked. Responses are re-tokenised from their text.

Entropies (nats): token-level = mean next-token entropy over the response positions of a model's
own samples (mean over tokens of a sample, then over samples, then over problems); answer-level =
entropy of the empirical distribution of distinct final answers (last ``\\boxed{}`` content,
whitespace removed; samples without a box form one ``<no answer>`` category).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from reweight.evaluation.records import EvalInputError, ProblemResult
from reweight.evaluation.sampling import render_prompt, tokenizer_vocab_limit
from reweight.models import eos_token_ids

DEFAULT_ZETA = 0.05
NO_ANSWER = "<no answer>"


def support_epsilon(k: int, zeta: float = DEFAULT_ZETA) -> float:
    """ε = −ln(ζ)/k."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not 0 < zeta < 1:
        raise ValueError(f"zeta must be in (0, 1), got {zeta}")
    return -math.log(zeta) / k


@dataclass(frozen=True)
class SupportCounts:
    preservation: int
    shrinkage: int
    expansion: int
    neither: int = 0


def classify_support(logp_base: Sequence[float] | np.ndarray, logp_rl: Sequence[float] | np.ndarray, epsilon: float) -> SupportCounts:
    """Counts of P / S / E / neither over completions, from their sequence log-probs, shape (C,) each.

    In support means probability > ε (strictly), compared in log space.
    """
    base, rl = np.asarray(logp_base, dtype=np.float64), np.asarray(logp_rl, dtype=np.float64)
    if base.shape != rl.shape:
        raise ValueError(f"logp_base {base.shape} and logp_rl {rl.shape} differ in shape")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    log_eps = math.log(epsilon)
    in_base, in_rl = base > log_eps, rl > log_eps
    return SupportCounts(
        preservation=int(np.sum(in_base & in_rl)),
        shrinkage=int(np.sum(in_base & ~in_rl)),
        expansion=int(np.sum(~in_base & in_rl)),
        neither=int(np.sum(~in_base & ~in_rl)),
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


def normalise_answer(answer: str | None) -> str:
    return NO_ANSWER if answer is None else "".join(answer.split())


def answer_entropy(answers: Sequence[str | None]) -> float:
    """Entropy (nats) of the empirical distribution of distinct final answers; 0 for one sample."""
    if not answers:
        raise ValueError("answer entropy of zero samples")
    freq = np.array(list(Counter(normalise_answer(a) for a in answers).values()), dtype=np.float64)
    p = freq / freq.sum()
    return float(-(p * np.log(p)).sum())


# ---------------------------------------------------------------------------------------------- scoring


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


# ---------------------------------------------------------------------------------------------- pair


@dataclass
class ProblemSupport:
    """Support and entropy metrics of one problem (counts over distinct correct completions)."""

    uid: str
    data_source: str
    preservation: int
    shrinkage: int
    expansion: int
    neither: int
    num_distinct_correct: int
    SRR: float
    NDR: float
    SDS: float
    NSCR: float
    answer_entropy_base: float
    answer_entropy_rl: float
    token_entropy_base: float
    token_entropy_rl: float


def _stopped(reason: str | None) -> bool:
    return reason != "length"


def _match_problems(base: Sequence[ProblemResult], rl: Sequence[ProblemResult]) -> list[tuple[ProblemResult, ProblemResult]]:
    rl_by_uid = {r.uid: r for r in rl}
    pairs = [(b, rl_by_uid[b.uid]) for b in base if b.uid in rl_by_uid]
    if not pairs:
        raise EvalInputError("the base and RL results share no problem uid; evaluate both on the same dataset")
    for b, r in pairs:
        if b.ground_truth != r.ground_truth:
            raise EvalInputError(f"problem {b.uid!r}: base and RL results have different ground truths")
        if not b.prompt and not r.prompt:
            raise EvalInputError(f"problem {b.uid!r}: no prompt in the results; support metrics need the prompt text")
    return pairs


def pair_support(
    base_results: Sequence[ProblemResult],
    rl_results: Sequence[ProblemResult],
    base_model,
    rl_model,
    tokenizer,
    k: int | None = None,
    zeta: float = DEFAULT_ZETA,
    epsilon: float | None = None,
    token_entropy: bool = True,
    batch_size: int = 8,
    use_chat_template: bool = True,
    progress: bool = True,
    done: Mapping[str, ProblemSupport] | None = None,
    on_row: Callable[[ProblemSupport], None] | None = None,
) -> tuple[list[ProblemSupport], float]:
    """Per-problem support metrics for the problems both result sets hold; returns (rows, ε).

    ``k`` defaults to the smallest sample count over both sets (k above it is refused);
    ``epsilon`` overrides −ln(ζ)/k. Each model scores the distinct correct completions of both
    models and (for token entropy) its own samples. ``done``: rows already computed (resume), kept
    as they are; ``on_row`` is called with each newly computed row (to append it to a file).
    """
    from tqdm.auto import tqdm

    pairs = _match_problems(base_results, rl_results)
    n_min = min(min(b.n, r.n) for b, r in pairs)
    if k is None:
        k = n_min
    elif k > n_min:
        raise EvalInputError(f"support k={k} exceeds the samples per problem (n={n_min}); k > n")
    eps = support_epsilon(k, zeta) if epsilon is None else float(epsilon)
    done = done or {}
    rows = []
    for b, r in tqdm(pairs, desc="support metrics", disable=not progress, unit="prob"):
        if b.uid in done:
            rows.append(done[b.uid])
            continue
        prompt_text = render_prompt(tokenizer, b.prompt or r.prompt, use_chat_template)
        distinct: dict[str, bool] = {}  # correct completion text -> append EOS
        for res in (b, r):
            for text, ok, reason in zip(res.responses, res.correct, res.finish_reasons or [None] * res.n):
                if ok:
                    distinct[text] = distinct.get(text, False) or _stopped(reason)
        texts = list(distinct)

        def score(model, own: ProblemResult) -> tuple[list[float], float]:
            extra = own.responses if token_entropy else []
            reasons = (own.finish_reasons or [None] * own.n) if token_entropy else []
            all_texts = texts + list(extra)
            eos = [distinct[t] for t in texts] + [_stopped(x) for x in reasons]
            scores = score_sequences(model, tokenizer, [prompt_text] * len(all_texts), all_texts, eos, batch_size)
            ent = [s.mean_entropy for s in scores[len(texts) :] if s.num_tokens > 0]
            return [s.logprob for s in scores[: len(texts)]], (float(np.mean(ent)) if ent else math.nan)

        logp_base, ent_base = score(base_model, b)
        logp_rl, ent_rl = score(rl_model, r)
        counts = classify_support(logp_base, logp_rl, eps)
        rows.append(
            ProblemSupport(
                uid=b.uid,
                data_source=b.data_source,
                **asdict(counts),
                num_distinct_correct=len(texts),
                **support_ratios(counts),
                answer_entropy_base=answer_entropy(b.answers or [None] * b.n),
                answer_entropy_rl=answer_entropy(r.answers or [None] * r.n),
                token_entropy_base=ent_base,
                token_entropy_rl=ent_rl,
            )
        )
        if on_row is not None:
            on_row(rows[-1])
    return rows, eps


def aggregate_support(rows: Sequence[ProblemSupport]) -> dict[str, dict[str, float]]:
    """Per benchmark and overall ("average" = pooled over all problems): pooled-count ratios,
    per-problem means of the ratios (NaN-skipping, with the number of defined problems) and mean entropies."""
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
        entry: dict[str, float] = {"num_problems": len(members), **asdict(total), **support_ratios(total)}
        for metric in ("SRR", "NDR", "SDS", "NSCR"):
            vals = np.array([getattr(m, metric) for m in members], dtype=np.float64)
            defined = vals[~np.isnan(vals)]
            entry[f"{metric}_per_problem_mean"] = float(defined.mean()) if defined.size else math.nan
            entry[f"{metric}_num_defined"] = int(defined.size)
        for metric in ("answer_entropy_base", "answer_entropy_rl", "token_entropy_base", "token_entropy_rl"):
            vals = np.array([getattr(m, metric) for m in members], dtype=np.float64)
            entry[metric] = float(np.nanmean(vals)) if np.any(~np.isnan(vals)) else math.nan
        out[name] = entry
    return out
