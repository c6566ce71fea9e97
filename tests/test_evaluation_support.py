"""Invisible Leash support / entropy metrics: hand-built results, the paper's closed forms and published
rows, answer classes by mathematical equivalence, teacher forcing vs a naive loop, and the CLI end to end."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch

from reweight.evaluation.cli import main
from reweight.evaluation.metrics import pass_at_k_array
from reweight.evaluation.records import EvalInputError, ProblemResult, write_results
from reweight.evaluation.sampling import render_prompt
from reweight.evaluation.support import (
    SupportCounts,
    _checker_equivalent,
    aggregate_support,
    answer_classes,
    answer_entropy,
    answers_equivalent,
    classify_problem,
    final_answers,
    implied_epsilon,
    own_token_entropy,
    pair_support,
    score_sequences,
    support_ratios,
    token_entropy_scorer,
)

F, T = False, True


def _result(uid, correct, data_source="bench_a", answers=None, responses=None, reasons=None, gt="5"):
    n = len(correct)
    return ProblemResult(
        uid=uid, data_source=data_source, ground_truth=gt, prompt=[{"role": "user", "content": f"Compute 2+3 ({uid})."}],
        responses=responses or [f"r{i}" for i in range(n)], correct=list(correct),
        answers=answers if answers is not None else [None] * n, finish_reasons=reasons or ["stop"] * n,
    )


# Hand-built pair, n = 4 samples per problem. Within k = 4 / k = 2 (first two samples only):
#   both     base solves at sample 2, RL at 1          -> P / P
#   base     base at 1, RL never                       -> S / S
#   rl       RL at 2, base never                       -> E / E
#   neither  nobody                                    -> O / O
#   late     base only at sample 3, RL at 1            -> P / E   (budget cuts the base's success off)
#   late2    base at 1, RL only at sample 4 (bench_b)  -> P / S
#   none_b   nobody (bench_b)                          -> O / O
BASE = {
    "both": [F, T, F, F], "base": [T, F, F, F], "rl": [F, F, F, F], "neither": [F, F, F, F],
    "late": [F, F, T, F], "late2": [T, F, F, F], "none_b": [F, F, F, F],
}
RL = {
    "both": [T, F, F, F], "base": [F, F, F, F], "rl": [F, T, F, F], "neither": [F, F, F, F],
    "late": [T, F, F, F], "late2": [F, F, F, T], "none_b": [F, F, F, F],
}
BENCH = {uid: ("bench_b" if uid in ("late2", "none_b") else "bench_a") for uid in BASE}


def _pair():
    return ([_result(u, c, BENCH[u]) for u, c in BASE.items()], [_result(u, c, BENCH[u]) for u, c in RL.items()])


def test_counts_of_a_hand_built_pair_with_budget_cut():
    base, rl = _pair()
    rows4, k4 = pair_support(base, rl, progress=False)
    assert k4 == 4  # default budget: n
    by_uid = {r.uid: (r.preservation, r.shrinkage, r.expansion, r.neither) for r in rows4}
    assert by_uid == {"both": (1, 0, 0, 0), "base": (0, 1, 0, 0), "rl": (0, 0, 1, 0), "neither": (0, 0, 0, 1),
                      "late": (1, 0, 0, 0), "late2": (1, 0, 0, 0), "none_b": (0, 0, 0, 1)}
    agg4 = aggregate_support(rows4)
    assert {g: (a["preservation"], a["shrinkage"], a["expansion"], a["neither"]) for g, a in agg4.items()} == {
        "bench_a": (2, 1, 1, 1), "bench_b": (1, 0, 0, 1), "average": (3, 1, 1, 2)}

    rows2, k2 = pair_support(base, rl, k=2, progress=False)
    assert k2 == 2
    agg2 = aggregate_support(rows2)
    assert {g: (a["preservation"], a["shrinkage"], a["expansion"], a["neither"]) for g, a in agg2.items()} == {
        "bench_a": (1, 1, 2, 1), "bench_b": (0, 1, 0, 1), "average": (1, 2, 2, 2)}
    assert [r.num_correct_base for r in rows2] == [1, 1, 0, 0, 0, 1, 0]  # only the first two samples count

    # pass@k of each model at k = n is the fraction of problems in its support: unbiased pass@n (metrics module)
    for which, res, key in (("base", base, "pass_at_k_base"), ("rl", rl, "pass_at_k_rl")):
        expected = pass_at_k_array([r.n for r in res], [r.num_correct for r in res], 4).mean()
        assert agg4["average"][key] == pytest.approx(expected), which

    with pytest.raises(EvalInputError, match="k > n"):
        pair_support(base, rl, k=5, progress=False)
    with pytest.raises(EvalInputError, match="k must be >= 1"):
        pair_support(base, rl, k=0, progress=False)
    with pytest.raises(EvalInputError, match="share no problem"):
        pair_support(base, [_result("other", [T])], progress=False)
    with pytest.raises(EvalInputError, match="different ground truths"):
        pair_support(base[:1], [_result("both", RL["both"], gt="6")], progress=False)


def test_classify_problem_is_the_found_within_k_indicator():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 7))
        b, r = rng.random(n) < 0.3, rng.random(n) < 0.3
        k = int(rng.integers(1, n + 1))
        got = classify_problem(list(b), list(r), k)
        in_b, in_r = bool(b[:k].any()), bool(r[:k].any())
        assert (got.preservation, got.shrinkage, got.expansion, got.neither) == (
            in_b * in_r, in_b * (1 - in_r), in_r * (1 - in_b), (1 - in_b) * (1 - in_r))


@pytest.mark.parametrize("p, s, e", [(2, 1, 2), (15, 4, 4), (17, 2, 3), (1355, 56, 5), (7, 0, 1), (3, 5, 0)])
def test_ratios_against_their_closed_forms(p, s, e):
    r = support_ratios(SupportCounts(p, s, e, neither=11))
    assert r["SRR"] == pytest.approx(p / (p + s))
    assert r["NDR"] == pytest.approx(e / (p + e))
    assert r["SDS"] == pytest.approx(2 * p * e / (p * p + 2 * p * e + e * s))  # the paper's expanded form
    assert r["NSCR"] == pytest.approx((e - s) / (p + e + s))


@pytest.mark.parametrize("counts, published", [
    ((15, 4, 4), (0.789, 0.211, 0.332, 0.000)),  # Table 3, AIME24, SFT (P, S, E)
    ((17, 2, 3), (0.895, 0.150, 0.257, 0.045)),  # Table 3, AIME24, DAPO
    ((138, 34, 12), (0.802, 0.080, 0.145, -0.120)),  # Table 3, Minerva, DAPO
])
def test_ratios_reproduce_rows_published_in_the_paper(counts, published):
    r = support_ratios(SupportCounts(*counts))
    assert [round(r[m], 3) for m in ("SRR", "NDR", "SDS", "NSCR")] == list(published)


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


def _entropy(freqs):
    p = np.array(freqs, dtype=np.float64) / sum(freqs)
    return float(-(p * np.log(p)).sum())


def test_answer_entropy_groups_mathematically_equal_answers():
    answers = ["1/2", "0.5", "\\frac{1}{2}", "1/3", None, None]
    assert answer_classes(answers, "math_dapo") == [0, 0, 0, 1, 2, 2]
    assert answer_entropy(answers, "math_dapo") == pytest.approx(_entropy([3, 1, 2]))
    # text alone would see five answers
    assert answer_entropy(answers, "math_dapo") < _entropy(list(Counter(answers).values()))
    assert answers_equivalent("2\\sqrt{2}", "\\sqrt{8}", "aime24") and not answers_equivalent("1/3", "0.33", "aime24")
    # the synthetic task's checker is exact integers: 05 == 5, and non-integers only match their own text
    assert answer_classes(["5", "05", " 5", "6", "1/2", "0.5"], "synthetic_arith") == [0, 0, 0, 1, 2, 3]
    assert answer_entropy(["7"] * 5, "synthetic_arith") == 0.0
    assert answer_entropy([None, None], "math_dapo") == 0.0
    # plain integers are compared by value without a checker call; the checkers agree with that
    for x, y in (("05", "5"), ("-3", "-03"), ("12", "21"), ("+7", "7")):
        assert answers_equivalent(x, y, "aime24") == (int(x) == int(y))
        assert _checker_equivalent("aime24", x, y) == (int(x) == int(y))
        assert _checker_equivalent("synthetic_arith", x, y) == (int(x) == int(y))
    with pytest.raises(ValueError):
        answer_entropy([])


def test_final_answers_fall_back_to_the_answer_line_and_use_the_first_k():
    res = _result("p", [F, F, F], responses=["so \\boxed{0.5}", "Answer: 1/2", "no answer here"], answers=[None, None, None])
    assert final_answers(res) == ["0.5", "1/2", None]
    assert final_answers(res, 2) == ["0.5", "1/2"]
    res.answers = ["7", None, None]  # a recorded answer wins
    assert final_answers(res, 1) == ["7"]
    row = pair_support([res], [res], k=3, progress=False)[0][0]
    assert row.num_answers_base == 3 and row.answer_entropy_base == pytest.approx(_entropy([1, 1, 1]))  # 7, 1/2, none
    row2 = pair_support([res], [res], k=2, progress=False)[0][0]
    assert row2.answer_entropy_rl == pytest.approx(_entropy([1, 1]))


# ---------------------------------------------------------------------------------------------- token entropy


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


def test_token_entropy_is_over_the_models_own_first_k_samples(tiny_pair):
    tok, base, rl = tiny_pair
    b = _result("p0", [T, F, T], responses=["\\boxed{5}", "2+3=6 \\boxed{6}", "so 5"], reasons=["stop", "length", "stop"])
    r = _result("p0", [F, T, F], responses=["x", "\\boxed{5}", "y y"])
    prompt = render_prompt(tok, b.prompt)
    naive_b = [naive_scores(base, tok, prompt, t, e, len(tok))[1] for t, e in zip(b.responses[:2], [True, False])]
    assert own_token_entropy(base, tok, b, 2, batch_size=2) == pytest.approx(np.mean(naive_b), abs=1e-4)
    naive_r = [naive_scores(rl, tok, prompt, t, True, len(tok))[1] for t in r.responses]
    rows, _ = pair_support([b], [r], token_entropy=token_entropy_scorer(base, rl, tok, batch_size=2), progress=False)
    assert rows[0].token_entropy_rl == pytest.approx(np.mean(naive_r), abs=1e-4)
    no_model, _ = pair_support([b], [r], progress=False)
    assert math.isnan(no_model[0].token_entropy_base) and no_model[0].preservation == 1


# ---------------------------------------------------------------------------------------------- CLI


def _write_pair(root):
    base, rl = _pair()
    write_results(root / "base.jsonl", {"source": "test"}, base)
    write_results(root / "rl.jsonl", {"source": "test"}, rl)
    return str(root / "base.jsonl"), str(root / "rl.jsonl")


def test_cli_support_without_a_model_resume_and_report(tmp_path, capsys):
    base_path, rl_path = _write_pair(tmp_path)
    out = tmp_path / "support.json"
    args = ["support", "--base-results", base_path, "--rl-results", rl_path, "--out", str(out), "--k", "2",
            "--no-token-entropy", "--no-progress"]
    assert main(args) == 0
    support = json.loads(out.read_text())
    assert support["k"] == 2 and support["estimator"] == "answer_found_within_k"
    assert support["epsilon"] == pytest.approx(math.log(20) / 2) and support["num_unmatched"] == 0
    avg = support["aggregate"]["average"]
    assert (avg["preservation"], avg["shrinkage"], avg["expansion"], avg["neither"]) == (1, 2, 2, 2)
    assert avg["SRR"] == pytest.approx(1 / 3) and avg["NDR"] == pytest.approx(2 / 3) and avg["NSCR"] == pytest.approx(0.0)
    assert avg["token_entropy_base"] is None  # not computed: NaN -> null
    bench_b = support["aggregate"]["bench_b"]
    # bench_b at k = 2: S = 1, O = 1 -> SRR = 0, NDR = 0/0 undefined (null), SDS undefined, NSCR = -1
    assert bench_b["SRR"] == 0.0 and bench_b["NDR"] is None and bench_b["SDS"] is None and bench_b["NSCR"] == -1.0
    rows_file = tmp_path / "support.json.rows.jsonl"
    lines = rows_file.read_text().splitlines()
    assert len(lines) == 1 + 7

    # rerun: every row is resumed, nothing recomputed, the same output
    assert main(args) == 0
    assert rows_file.read_text().splitlines() == lines and json.loads(out.read_text()) == support
    # another budget into the same rows file is refused, naming the setting
    assert main([*args[:-4], "--k", "4", "--no-token-entropy", "--no-progress"]) == 2
    assert "k=2" in capsys.readouterr().err

    report_dir = tmp_path / "report"
    assert main(["report", "--results", f"base={base_path}", "--results", f"rl={rl_path}", "--support", str(out),
                 "--out-dir", str(report_dir), "--bootstrap", "0", "--no-plot"]) == 0
    md = (report_dir / "report.md").read_text()
    assert "## Support (Invisible Leash)" in md and "budget k = 2" in md
    avg_row = next(line for line in md.splitlines() if line.startswith("| average |"))
    assert avg_row.split(" | ")[1:6] == ["7", "1", "2", "2", "2"]  # problems, P, S, E, O


def test_cli_support_refuses_bad_input_before_any_model(tmp_path, capsys):
    base_path, rl_path = _write_pair(tmp_path)
    common = ["support", "--base-results", base_path, "--rl-results", rl_path, "--out", str(tmp_path / "s.json")]
    assert main([*common, "--k", "9", "--no-token-entropy"]) == 2
    assert "k > n" in capsys.readouterr().err
    assert main(common) == 2  # token entropy asked, no model given
    assert "--no-token-entropy" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()
    (tmp_path / "old.json.rows.jsonl").write_text(json.dumps({"meta": {}}) + "\n" + json.dumps({"uid": "both", "SRR": 1.0}) + "\n")
    assert main(["support", "--base-results", base_path, "--rl-results", rl_path, "--out", str(tmp_path / "old.json"),
                 "--no-token-entropy"]) == 2
    assert "older support estimator" in capsys.readouterr().err


def test_cli_support_with_token_entropy_on_the_tiny_pair(tiny_pair, tiny_pair_dirs, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    _, base, rl = tiny_pair
    base_dir, rl_dir = tiny_pair_dirs
    tok = AutoTokenizer.from_pretrained(base_dir)  # the tokenizer the CLI loads (the saved one)
    b = [_result("p0", [T, F], responses=["\\boxed{5}", "2+3=6 \\boxed{6}"], answers=["5", "6"]),
         _result("p1", [F, F], responses=["hmm", "\\boxed{4}"], answers=[None, "4"], reasons=["length", "stop"])]
    r = [_result("p0", [T, T], responses=["so \\boxed{5}", "\\boxed{05}"], answers=["5", "05"]),
         _result("p1", [F, T], responses=["\\boxed{3}", "\\boxed{5}"], answers=["3", "5"])]
    write_results(tmp_path / "b.jsonl", {}, b)
    write_results(tmp_path / "r.jsonl", {}, r)
    out = tmp_path / "support.json"
    args = ["support", "--base", base_dir, "--rl", rl_dir, "--base-results", str(tmp_path / "b.jsonl"),
            "--rl-results", str(tmp_path / "r.jsonl"), "--out", str(out), "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    support = json.loads(out.read_text())
    rows = {p["uid"]: p for p in support["problems"]}
    assert (rows["p0"]["preservation"], rows["p1"]["expansion"]) == (1, 1)
    for res_list, model, key in ((b, base, "token_entropy_base"), (r, rl, "token_entropy_rl")):
        for res in res_list:
            prompt = render_prompt(tok, res.prompt)
            naive = [naive_scores(model, tok, prompt, t, reason != "length", len(tok))[1]
                     for t, reason in zip(res.responses, res.finish_reasons)]
            assert rows[res.uid][key] == pytest.approx(np.mean(naive), abs=1e-4)
    # answer entropy by class (bench_a: the math checker): base p0 {5, 6} -> ln 2; RL p0 {5, 05} -> one class
    assert rows["p0"]["answer_entropy_base"] == pytest.approx(math.log(2))
    assert rows["p0"]["answer_entropy_rl"] == 0.0
    assert support["aggregate"]["average"]["token_entropy_rl"] == pytest.approx(
        np.mean([rows["p0"]["token_entropy_rl"], rows["p1"]["token_entropy_rl"]]))
    assert support["epsilon"] == pytest.approx(implied_epsilon(2))

    # rerun: every row is resumed, so no model is even loaded
    import reweight.evaluation.cli as cli

    def no_loading(*_a, **_k):
        raise AssertionError("a model was loaded on a fully resumed run")

    import reweight.evaluation.support as support_module

    monkeypatch.setattr(cli, "load_model", no_loading)
    monkeypatch.setattr(support_module, "load_model", no_loading)  # where `support` loads its models
    assert main(args) == 0 and json.loads(out.read_text()) == support


def test_support_file_refuses_models_without_a_shared_tokenizer_before_loading_them(tiny_pair_dirs, tmp_path, monkeypatch):
    """Token entropy compares two models on one tokenizer: reweight.models' rule, checked before any weights load."""
    import reweight.evaluation.support as support_module
    from reweight.models import TokenizerMismatchError
    from reweight.tiny import build_tokenizer

    base_dir, _ = tiny_pair_dirs
    other = tmp_path / "other_tok"
    build_tokenizer(vocab_size=400).save_pretrained(other)
    base_path, rl_path = _write_pair(tmp_path)

    def no_loading(*_a, **_k):
        raise AssertionError("a model was loaded although the tokenizers differ")

    monkeypatch.setattr(support_module, "load_model", no_loading)
    with pytest.raises(TokenizerMismatchError, match="must share a tokenizer"):
        support_module.support_file(base_path, rl_path, str(tmp_path / "s.json"), base_model=base_dir,
                                    rl_model=str(other), progress=False)
    assert not (tmp_path / "s.json").exists()
