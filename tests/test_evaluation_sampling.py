"""Sampling with a tiny model, reading responses from files, resuming, and bad-input errors."""

from __future__ import annotations

import json
import sys

import pandas as pd
import pytest

from reweight.data.synthetic import DATA_SOURCE, make_problems, to_verl_row
from reweight.evaluation.records import EvalInputError, EvalProblem, ResultsWriter, load_problems, read_results
from reweight.evaluation.sampling import (
    HFSampler,
    SamplingConfig,
    VLLMSampler,
    load_response_file,
    sample_dataset,
    score_response_file,
)
from reweight.evaluation.scoring import is_correct

N, MAX_NEW = 2, 3


@pytest.fixture(scope="module")
def problems():
    return [
        EvalProblem(f"{DATA_SOURCE}/{i}", to_verl_row(p, "test", i)["prompt"], str(p.answer), DATA_SOURCE)
        for i, p in enumerate(make_problems(4, seed=7))
    ]


@pytest.fixture(scope="module")
def sampler(tiny_pair):
    tok, base, _ = tiny_pair
    return HFSampler(base, tok, SamplingConfig(n=N, max_new_tokens=MAX_NEW, batch_size=4))


class Recording:
    """Wraps a sampler: records the prompts it is asked for; optionally fails after some calls."""


    def __init__(self, inner, fail_after: int | None = None):
        self.inner, self.fail_after, self.prompts = inner, fail_after, []

    def sample(self, prompts, n, seed):
        if self.fail_after is not None and len(self.prompts) >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.prompts.append(list(prompts))
        return self.inner.sample(prompts, n, seed)


def test_hf_sampling_end_to_end_is_scored(tiny_pair, sampler, problems, tmp_path):
    tok, base, _ = tiny_pair
    writer = ResultsWriter(tmp_path / "a.jsonl", {"n": N})
    results = sample_dataset(problems, sampler, tok, writer, N, problems_per_batch=2, seed=1, progress=False)
    assert [r.uid for r in results] == [p.uid for p in problems]
    for r, p in zip(results, problems):
        assert r.n == N and len(r.finish_reasons) == N
        assert set(r.finish_reasons) <= {"stop", "length"}
        assert r.correct == [is_correct(x, p.ground_truth, p.data_source) for x in r.responses]
    assert len({x for r in results for x in r.responses}) > 1  # sampled, not one constant string
    _, reread = read_results(tmp_path / "a.jsonl")
    assert [r.responses for r in reread] == [r.responses for r in results]


def test_resume_skips_finished_problems_and_matches_uninterrupted_run(tiny_pair, sampler, problems, tmp_path):
    tok = tiny_pair[0]
    full = sample_dataset(problems, sampler, tok, ResultsWriter(tmp_path / "full.jsonl", {"n": N}), N, 2, seed=3, progress=False)
    path = tmp_path / "resumed.jsonl"
    with pytest.raises(KeyboardInterrupt):
        sample_dataset(problems, Recording(sampler, fail_after=1), tok, ResultsWriter(path, {"n": N}), N, 2, seed=3, progress=False)
    with open(path, "a") as f:  # the process died in the middle of writing a line
        f.write('{"uid": "synthetic_arith/2", "respo')
    writer = ResultsWriter(path, {"n": N})
    assert sorted(writer.done) == [problems[0].uid, problems[1].uid]
    rec = Recording(sampler)
    resumed = sample_dataset(problems, rec, tok, writer, N, 2, seed=3, progress=False)
    asked = [p for batch in rec.prompts for p in batch]
    assert len(asked) == 2  # only problems 2 and 3
    assert [r.responses for r in resumed] == [r.responses for r in full]
    assert len(read_results(path)[1]) == 4
    with pytest.raises(EvalInputError, match="n=2.*n=3"):
        ResultsWriter(path, {"n": 3})
    other = [EvalProblem(problems[0].uid, "another prompt", "1", DATA_SOURCE)]
    with pytest.raises(EvalInputError, match="different prompt"):
        sample_dataset(other, rec, tok, ResultsWriter(path, {"n": N}), N, 2, progress=False)


def test_load_problems_from_parquet_and_missing_ground_truth(tmp_path):
    rows = [to_verl_row(p, "test", i) for i, p in enumerate(make_problems(3, seed=0))]
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    probs = load_problems(tmp_path / "d.parquet")
    assert [p.ground_truth for p in probs] == [r["reward_model"]["ground_truth"] for r in rows]
    assert probs[0].prompt == rows[0]["prompt"] and probs[0].uid == f"{DATA_SOURCE}/0"
    pd.DataFrame([{"prompt": "q", "data_source": "aime24"}]).to_parquet(tmp_path / "nogt.parquet")
    with pytest.raises(EvalInputError, match="nogt.parquet.*ground-truth.*reward_model.ground_truth"):
        load_problems(tmp_path / "nogt.parquet")
    with pytest.raises(EvalInputError, match="'my_answer'"):
        load_problems(tmp_path / "d.parquet", answer_key="my_answer")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(EvalInputError, match="empty.jsonl.*empty"):
        load_problems(tmp_path / "empty.jsonl")
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        load_problems(tmp_path / "missing.parquet")


def test_reading_responses_long_and_wide_layouts(tmp_path, problems):
    long_rows = [
        {"prompt_index": i, "response": f"\\boxed{{{p.ground_truth if j == 0 else 'x'}}}", "finish_reason": "stop"}
        for i, p in enumerate(problems) for j in range(3)
    ]
    with open(tmp_path / "long.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in long_rows)
    pairs = load_response_file(tmp_path / "long.jsonl", problems=problems)
    assert [p.uid for p, _ in pairs] == [p.uid for p in problems] and all(len(s) == 3 for _, s in pairs)
    results = score_response_file(pairs, ResultsWriter(tmp_path / "r.jsonl", {}), progress=False)
    assert [r.correct for r in results] == [[True, False, False]] * len(problems)

    wide = pd.DataFrame([{"responses": ["\\boxed{1/2}", "\\boxed{3}"], "ground_truth": "0.5", "data_source": "amc"}])
    wide.to_parquet(tmp_path / "wide.parquet")
    [(problem, samples)] = load_response_file(tmp_path / "wide.parquet")
    assert problem.data_source == "amc" and [t for t, _ in samples] == ["\\boxed{1/2}", "\\boxed{3}"]
    # scorer boxed: the last \\boxed{} by math_verify, so 1/2 == 0.5
    results = score_response_file([(problem, samples)], ResultsWriter(tmp_path / "w.jsonl", {}), progress=False, scorer="boxed")
    assert results[0].correct == [True, False]
    # the default (dapo) is the training reward: for amc, DAPO's Answer-line rule, which a bare box fails
    results = score_response_file([(problem, samples)], ResultsWriter(tmp_path / "d.jsonl", {}), progress=False)
    assert results[0].correct == [False, False]

    with pytest.raises(EvalInputError, match="no ground-truth column"):
        load_response_file(tmp_path / "long.jsonl")  # no dataset to take ground truths from
    pd.DataFrame([{"text_out": "a"}]).to_parquet(tmp_path / "noresp.parquet")
    with pytest.raises(EvalInputError, match="noresp.parquet.*no response column"):
        load_response_file(tmp_path / "noresp.parquet", problems=problems)
    (tmp_path / "empty.parquet").write_bytes(b"")
    with pytest.raises(EvalInputError, match="empty.parquet.*empty"):
        load_response_file(tmp_path / "empty.parquet", problems=problems)


def test_vllm_backend_without_vllm_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(ImportError, match="vllm is not installed"):
        VLLMSampler("some/model", SamplingConfig())


def test_sampling_config_refuses_bad_values():
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError, match="n "):
        SamplingConfig(n=0)


def test_checkpoint_sampling_defaults_are_not_applied(tiny_pair, sampler):
    """Sampling defaults in a checkpoint's generation_config.json must not change the samples."""
    tok, base, _ = tiny_pair
    prompts = ["<|im_start|>user\nCompute 3+4.<|im_end|>\n<|im_start|>assistant\n"]
    clean = sampler.sample(prompts, 4, seed=5)
    saved = base.generation_config
    try:
        from transformers import GenerationConfig

        base.generation_config = GenerationConfig(
            top_k=1, min_p=0.9, suppress_tokens=list(range(10, len(tok))), eos_token_id=tok.eos_token_id
        )
        assert sampler.sample(prompts, 4, seed=5) == clean
    finally:
        base.generation_config = saved
    assert len({text for text, _ in clean[0]}) > 1  # top_k=1 / suppress_tokens would have made them identical
