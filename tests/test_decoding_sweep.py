"""``reweight-decode``: the sweep (table, plots, resume) and the generate command, input errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from reweight.data.synthetic import make_problems, to_verl_row
from reweight.decoding import TwoModelDecoder
from reweight.decoding.cli import main

N_PROMPTS, N_SAMPLES, MAX_NEW = 3, 2, 6
SWEEP_ARGS = [
    "--n", str(N_SAMPLES), "--max-new-tokens", str(MAX_NEW), "--batch-size", "4", "--seed", "3",
    "--grid", "logp_diff=-0.5,0", "--grid", "random=0.5", "--grid", "kl=0.05",
    "--extrapolate-tau", "0", "--gammas", "0.5", "--global-gammas", "0.3", "--no-progress",
]


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """One intra-op thread: on a shared 2-core machine two spinning OpenMP threads are ~10x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


PARITY_SOURCE = "decode_test_parity"


def parity_checker(response: str, ground_truth: str) -> bool:
    """A test checker that random tiny models pass about half the time: response length parity
    equals the answer's parity. (The synthetic task's exact checker would score them all 0.)"""
    return len(response) % 2 == int(ground_truth) % 2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A verl-schema parquet of synthetic arithmetic problems, scored by :func:`parity_checker`
    (registered in the evaluation scoring registry under its ``data_source``)."""
    from reweight.evaluation.scoring import register_checker

    register_checker(PARITY_SOURCE, parity_checker)
    path = tmp_path_factory.mktemp("data") / "synthetic.parquet"
    rows = [dict(to_verl_row(p, "test", i), data_source=PARITY_SOURCE) for i, p in enumerate(make_problems(N_PROMPTS, seed=4))]
    pd.DataFrame(rows).to_parquet(path)
    return path


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_sweep_table_plots_and_resume(tiny_pair_dirs, dataset, tmp_path, capsys, monkeypatch):
    base_dir, rl_dir = tiny_pair_dirs
    out = tmp_path / "sweep"
    args = ["sweep", "--base", base_dir, "--rl", rl_dir, "--data", str(dataset), "--out", str(out), *SWEEP_ARGS]

    # 1) interrupted run: the decoder dies while decoding the 3rd grid point
    real_decode = TwoModelDecoder.decode
    calls = {"n": 0}
    per_point = -(-N_PROMPTS * N_SAMPLES // 4)  # decode calls per grid point (batch size 4)

    def dying_decode(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] > 2 * per_point:
            raise KeyboardInterrupt
        return real_decode(self, *a, **kw)

    monkeypatch.setattr(TwoModelDecoder, "decode", dying_decode)
    with pytest.raises(KeyboardInterrupt):
        main(args)
    finished = sorted(p.name for p in (out / "points").glob("*.json"))
    assert finished == ["replace_all.json", "replace_none.json"]  # base and RL come first
    kept = {name: (out / "points" / name).read_text() for name in finished}

    # 2) restart: finished points are not decoded again
    calls["n"] = -10_000
    code, stdout, _ = run_cli(args, capsys)
    assert code == 0
    expected_points = 2 + 3 + 1 + 1 + 1  # base, RL, logp_diff×2 (τ=0 shared with Fig. 4), random, kl, extrapolate, global
    assert calls["n"] == -10_000 + (expected_points - 2) * per_point
    for name, text in kept.items():
        assert (out / "points" / name).read_text() == text

    table = pd.read_csv(out / "results.csv")
    assert len(table) == expected_points
    from_json = pd.DataFrame(json.loads((out / "results.json").read_text()))
    pd.testing.assert_frame_equal(from_json[table.columns], table, check_exact=False, check_dtype=False)
    by_key = table.set_index("key")
    assert by_key.loc["replace_none", "replacement_ratio"] == 0.0
    assert by_key.loc["replace_all", "replacement_ratio"] == 1.0
    assert by_key.loc["global_all_gamma+0.3", "replacement_ratio"] == 1.0
    assert set(table["n_sequences"]) == {N_PROMPTS * N_SAMPLES}

    # every point's numbers agree with its per-sequence records, scored independently
    rows = pd.read_parquet(dataset).to_dict(orient="records")
    assert 0 < table["accuracy"].mean() < 1
    for key, row in by_key.iterrows():
        records = [json.loads(line) for line in (out / "points" / f"{key}.samples.jsonl").read_text().splitlines()]
        assert len(records) == N_PROMPTS * N_SAMPLES
        correct = [parity_checker(r["text"], rows[r["prompt_index"]]["reward_model"]["ground_truth"]) for r in records]
        assert [r["correct"] for r in records] == correct
        assert row["accuracy"] == pytest.approx(sum(correct) / len(correct))
        generated = sum(len(r["tokens"]) for r in records)
        replaced = sum(len(r["replaced_positions"]) for r in records)
        assert row["replacement_ratio"] == pytest.approx(replaced / generated)
        assert all(1 <= len(r["tokens"]) <= MAX_NEW for r in records)
    # the same seed per (prompt, sample) at every point: base and RL-free settings share the proposal stream
    none_tokens = [json.loads(x)["tokens"] for x in (out / "points" / "replace_none.samples.jsonl").read_text().splitlines()]
    strict = [json.loads(x) for x in (out / "points" / "replace_logp_diff_tau-0.5.samples.jsonl").read_text().splitlines()]
    for toks, rec in zip(none_tokens, strict):
        first = rec["replaced_positions"][0] if rec["replaced_positions"] else len(rec["tokens"])
        assert rec["tokens"][:first] == toks[:first]

    import matplotlib.image as mpimg

    for fig in ("fig1c_accuracy_vs_ratio.png", "fig4_extrapolation.png"):
        image = mpimg.imread(out / fig)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100

    # 3) a rerun with different sampling settings refuses the directory instead of mixing results
    code, _, err = run_cli([*args, "--max-new-tokens", "7"], capsys)
    assert code == 2 and "different settings" in err


def test_generate_writes_records(tiny_pair_dirs, dataset, tmp_path, capsys):
    base_dir, rl_dir = tiny_pair_dirs
    out = tmp_path / "gen.jsonl"
    code, stdout, _ = run_cli(
        ["generate", "--base", base_dir, "--rl", rl_dir, "--data", str(dataset), "--out", str(out), "--criterion", "random",
         "--tau", "0.5", "--mode", "extrapolate", "--gamma", "0.2", "--max-new-tokens", "5", "--n", "2", "--no-progress"],
        capsys,
    )
    assert code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["prompt_index"], r["sample_index"]) for r in records] == [(i, j) for i in range(N_PROMPTS) for j in range(2)]
    summary = json.loads(stdout.strip().splitlines()[-1])
    total = sum(r["n_generated"] for r in records)
    assert summary["replacement_ratio"] == pytest.approx(sum(r["n_replaced"] for r in records) / total)
    assert summary["config"]["mode"] == "extrapolate" and summary["config"]["gamma"] == 0.2
    truths = pd.read_parquet(dataset)["reward_model"].map(lambda rm: rm["ground_truth"]).tolist()
    assert [r["correct"] for r in records] == [parity_checker(r["text"], truths[r["prompt_index"]]) for r in records]
    assert summary["accuracy"] == pytest.approx(sum(r["correct"] for r in records) / len(records))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--grid", "logp_diff=nan"], "NaN"),
        (["--grid", "perplexity=1"], "unknown criterion 'perplexity'"),
        (["--extrapolate-tau", "0", "--gammas", "nan"], "gamma"),
        (["--gammas", "0.1"], "extrapolate_tau"),
    ],
)
def test_sweep_bad_settings_fail_before_loading(extra, message, dataset, tmp_path, capsys):
    # models that are never loaded (hub ids, not fetched): the error must come from validation first
    code, _, err = run_cli(["sweep", "--base", "no-org/nope", "--rl", "no-org/nope", "--data",
                            str(dataset), "--out", str(tmp_path / "o"), *extra], capsys)
    assert code == 2 and message in err
    assert not (tmp_path / "o").exists()


def test_generate_bad_mode_and_gamma(tiny_pair_dirs, dataset, tmp_path, capsys):
    base_dir, rl_dir = tiny_pair_dirs
    common = ["generate", "--base", base_dir, "--rl", rl_dir, "--data", str(dataset), "--out", str(tmp_path / "g.jsonl")]
    code, _, err = run_cli([*common, "--mode", "extrapolate", "--gamma", "nan"], capsys)
    assert code == 2 and "gamma" in err
    code, _, err = run_cli([*common, "--tau", "nan"], capsys)
    assert code == 2 and "NaN" in err
    with pytest.raises(SystemExit):  # argparse rejects an unknown mode / criterion itself
        main([*common, "--mode", "mix"])
    assert "invalid choice" in capsys.readouterr().err
    assert not (tmp_path / "g.jsonl").exists()


def test_tokenizer_mismatch_and_missing_columns(tiny_pair_dirs, dataset, tmp_path, capsys, monkeypatch):
    from reweight.tiny import build_tokenizer

    base_dir, _ = tiny_pair_dirs
    other = tmp_path / "other_tok"
    build_tokenizer(vocab_size=400).save_pretrained(other)  # only a tokenizer: loading must stop before weights

    def no_model_loading(*a, **kw):
        raise AssertionError("a model was loaded despite bad input")

    monkeypatch.setattr("reweight.decoding.cli._load_decoder", no_model_loading)
    code, _, err = run_cli(["generate", "--base", base_dir, "--rl", str(other), "--data", str(dataset),
                            "--out", str(tmp_path / "g.jsonl")], capsys)
    assert code == 2 and "must share a tokenizer" in err and str(other) in err

    no_answer = tmp_path / "no_answer.jsonl"
    no_answer.write_text(json.dumps({"prompt": "Compute 1+1."}) + "\n")
    code, _, err = run_cli(["sweep", "--base", base_dir, "--rl", base_dir, "--data", str(no_answer),
                            "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "no ground truth" in err and str(no_answer) in err

    no_prompt = tmp_path / "no_prompt.jsonl"
    no_prompt.write_text(json.dumps({"question": "Compute 1+1.", "answer": "2"}) + "\n")
    code, _, err = run_cli(["sweep", "--base", base_dir, "--rl", base_dir, "--data", str(no_prompt),
                            "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "no 'prompt' column" in err and str(no_prompt) in err


def test_decode_samples_is_the_per_sequence_decode_whatever_the_chunking(tiny_pair):
    """The one chunked loop (generate and sweep): sequence (i, j) is prompt i decoded alone with
    sequence_seed(seed, i, j), in prompt-major order, for any batch size; on_chunk sees every sequence."""
    from reweight.decoding import DecodeConfig
    from reweight.decoding.sweep import decode_samples, sample_order, sequence_seed

    tok, base, rl = tiny_pair
    decoder = TwoModelDecoder(base, rl, tok)
    prompt_ids = [tok(t)["input_ids"] for t in ("Compute 1+1.", "What is 12 plus 7, exactly?", "x")]
    config = DecodeConfig(criterion="logp_diff", tau=-0.3, mode="extrapolate", gamma=0.2, max_new_tokens=6)
    order = sample_order(len(prompt_ids), 2)
    assert order == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    alone = [decoder.decode([prompt_ids[i]], config, [sequence_seed(7, i, j)])[0] for i, j in order]
    for batch_size in (1, 4):
        chunks = []
        got = decode_samples(decoder, prompt_ids, order, config, 7, batch_size, on_chunk=chunks.append)
        assert [r.tokens for r in got] == [r.tokens for r in alone]
        assert [r.replaced_positions for r in got] == [r.replaced_positions for r in alone]
        assert chunks == ([1] * 6 if batch_size == 1 else [4, 2])
    with pytest.raises(ValueError, match="batch_size"):
        decode_samples(decoder, prompt_ids, order, config, 7, 0)
