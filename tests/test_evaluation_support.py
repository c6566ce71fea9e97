"""Invisible Leash support / entropy metrics: a hand-computed example and teacher forcing vs a naive loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reweight.evaluation.records import EvalInputError, ProblemResult
from reweight.evaluation.sampling import render_prompt
from reweight.evaluation.support import (
    SupportCounts,
    aggregate_support,
    answer_entropy,
    classify_support,
    pair_support,
    score_sequences,
    support_epsilon,
    support_ratios,
)


def test_hand_computed_support_example():
    eps = support_epsilon(32, 0.05)
    assert eps == pytest.approx(math.log(20) / 32)  # 0.0936
    #            P     S     E     P     neither  E (0.09 < ε under base)
    p_base = [0.50, 0.20, 0.05, 0.12, 0.001, 0.09]
    p_rl = [0.40, 0.01, 0.30, 0.15, 0.002, 0.20]
    counts = classify_support(np.log(p_base), np.log(p_rl), eps)
    assert counts == SupportCounts(preservation=2, shrinkage=1, expansion=2, neither=1)
    r = support_ratios(counts)
    assert r["SRR"] == pytest.approx(2 / 3)
    assert r["NDR"] == pytest.approx(2 / 4)
    assert r["SDS"] == pytest.approx(2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))  # 4/7
    assert r["NSCR"] == pytest.approx((2 - 1) / 5)


def test_zero_denominators_are_nan_not_guessed():
    only_expansion = support_ratios(SupportCounts(0, 0, 3))
    assert math.isnan(only_expansion["SRR"]) and only_expansion["NDR"] == 1.0
    assert math.isnan(only_expansion["SDS"]) and only_expansion["NSCR"] == 1.0
    only_shrinkage = support_ratios(SupportCounts(0, 2, 0))
    assert only_shrinkage["SRR"] == 0.0 and math.isnan(only_shrinkage["NDR"]) and only_shrinkage["NSCR"] == -1.0
    nothing = support_ratios(SupportCounts(0, 0, 0, neither=4))
    assert all(math.isnan(v) for v in nothing.values())
    lost_and_found = support_ratios(SupportCounts(0, 1, 1))
    assert lost_and_found["SDS"] == 0.0  # SRR = 0, NDR = 1: harmonic mean 0


def test_answer_entropy_by_hand():
    # answers 1, 1, 2, none -> p = (1/2, 1/4, 1/4)
    assert answer_entropy(["1", " 1", "2", None]) == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    assert answer_entropy(["7"] * 5) == 0.0
    with pytest.raises(ValueError):
        answer_entropy([])


def naive_scores(model, tokenizer, prompt: str, response: str, add_eos: bool, vocab_limit: int):
    """Sum of log-probs and mean entropy: one unpadded, unbatched forward, positions walked one by one in float64."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r = tokenizer(response, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if add_eos else [])
    ids = p + r
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    total, ents = 0.0, []
    for t in range(len(p), len(ids)):  # logits at t-1 predict token t
        logp = torch.log_softmax(logits[t - 1, :vocab_limit], -1)
        total += float(logp[ids[t]])
        ents.append(float(-(logp.exp() * logp).sum()))
    return total, float(np.mean(ents))


def test_teacher_forced_scores_match_naive_loop_with_padding_and_masked_vocab(tiny_tokenizer):
    from reweight.tiny import build_model

    tok = tiny_tokenizer
    # 16 padded vocabulary rows the tokenizer lacks: they must be masked out
    model = build_model(len(tok) + 16, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, seed=3)
    prompts = [render_prompt(tok, [{"role": "user", "content": "Compute 2+3."}]), render_prompt(tok, "Compute 11*12+7, please.")]
    responses = ["2+3=5. \\boxed{5}", "the answer"]
    eos = [True, False]
    got = score_sequences(model, tok, prompts, responses, eos, batch_size=2)
    for s, p, r, e in zip(got, prompts, responses, eos):
        logp, ent = naive_scores(model, tok, p, r, e, len(tok))
        assert s.logprob == pytest.approx(logp, abs=1e-4)
        assert s.mean_entropy == pytest.approx(ent, abs=1e-4)
        assert s.num_tokens == len(tok(r, add_special_tokens=False)["input_ids"]) + int(e)


def _result(uid, responses, correct, reasons=None):
    return ProblemResult(
        uid=uid, data_source="synthetic_arith", ground_truth="5", prompt=[{"role": "user", "content": f"Compute 2+3 ({uid})."}],
        responses=responses, correct=correct, answers=[None] * len(responses), finish_reasons=reasons or ["stop"] * len(responses),
    )


def test_pair_support_against_naive_probabilities(tiny_pair):
    tok, base, rl = tiny_pair
    shared, b_only, r_only = "\\boxed{5}", "2+3=5 \\boxed{5}", "so \\boxed{5}"
    base_results = [_result("p0", [shared, b_only, "\\boxed{6}", shared], [True, True, False, True])]
    rl_results = [_result("p0", [shared, r_only, "\\boxed{4}", "x"], [True, True, False, False], ["stop", "length", "stop", "stop"])]
    prompt = render_prompt(tok, base_results[0].prompt)
    distinct = {shared: True, b_only: True, r_only: False}  # completion -> EOS appended (finished)
    naive_b = {t: naive_scores(base, tok, prompt, t, e, len(tok))[0] for t, e in distinct.items()}
    naive_r = {t: naive_scores(rl, tok, prompt, t, e, len(tok))[0] for t, e in distinct.items()}
    all_lp = sorted(list(naive_b.values()) + list(naive_r.values()))
    eps = math.exp((all_lp[2] + all_lp[3]) / 2)  # half of the six values above ε: a mixed split
    expected = SupportCounts(
        preservation=sum(naive_b[t] > math.log(eps) and naive_r[t] > math.log(eps) for t in distinct),
        shrinkage=sum(naive_b[t] > math.log(eps) and naive_r[t] <= math.log(eps) for t in distinct),
        expansion=sum(naive_b[t] <= math.log(eps) and naive_r[t] > math.log(eps) for t in distinct),
        neither=sum(naive_b[t] <= math.log(eps) and naive_r[t] <= math.log(eps) for t in distinct),
    )
    seen = []
    rows, got_eps = pair_support(base_results, rl_results, base, rl, tok, epsilon=eps, progress=False, on_row=seen.append)
    assert got_eps == eps and seen == rows and len(rows) == 1
    row = rows[0]
    assert (row.preservation, row.shrinkage, row.expansion, row.neither) == (
        expected.preservation, expected.shrinkage, expected.expansion, expected.neither)
    assert row.num_distinct_correct == 3
    own_ent = np.mean([naive_scores(base, tok, prompt, t, True, len(tok))[1] for t in base_results[0].responses])
    assert row.token_entropy_base == pytest.approx(own_ent, abs=1e-4)
    agg = aggregate_support(rows)
    assert agg["average"]["preservation"] == row.preservation and agg["synthetic_arith"]["num_problems"] == 1
    # default ε comes from k = n = 4
    _, default_eps = pair_support(base_results, rl_results, base, rl, tok, token_entropy=False, progress=False)
    assert default_eps == pytest.approx(math.log(20) / 4)
    with pytest.raises(EvalInputError, match="k > n"):
        pair_support(base_results, rl_results, base, rl, tok, k=5, progress=False)
    with pytest.raises(EvalInputError, match="share no problem"):
        pair_support(base_results, [_result("other", ["a"], [False])], base, rl, tok, progress=False)
