"""The embedded default's assets (reweight.embedded): built once, atomically, cached; config rewriting."""

from __future__ import annotations

import json

import pandas as pd
import pytest

TINY = dict(
    levels=(1,),
    n_train=64,
    n_val=16,
    sft_max_steps=10,
    sft_eval_every=5,
    sft_eval_problems=8,
    target_low=0.0,
    target_high=1.0,
    target_greedy=0.0,
)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REWEIGHT_CACHE", str(tmp_path))
    return tmp_path


@pytest.mark.timeout(300)
def test_assets_are_built_once_atomically_and_loadable(cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reweight.data.synthetic import DATA_SOURCE, compute_score
    from reweight.embedded import Recipe, asset_dir, ensure_built

    recipe = Recipe(**TINY)
    logs = []
    root = ensure_built(recipe, log=logs.append)
    assert root == asset_dir(recipe) and root.parent == cache / "embedded"
    assert sorted(p.name for p in root.parent.iterdir() if not p.name.startswith(".")) == [root.name]
    assert not [p for p in root.parent.iterdir() if ".tmp-" in p.name]  # no half-built directory left
    meta = json.loads((root / "meta.json").read_text())
    assert meta["key"] == recipe.key() and meta["sft_steps"] == 5
    assert 0.0 <= meta["base_val_accuracy_sampled"] <= 1.0

    train, val = pd.read_parquet(root / "train.parquet"), pd.read_parquet(root / "val.parquet")
    test = pd.read_parquet(root / "test.parquet")
    assert len(train) == 64 and len(val) == 16
    assert set(train.data_source) == {DATA_SOURCE}
    # the three splits hold disjoint sets of questions; the test split lists each of its questions once
    questions = {name: [r["question"] for r in df.extra_info] for name, df in (("train", train), ("val", val), ("test", test))}
    assert not set(questions["train"]) & set(questions["val"])
    assert not set(questions["test"]) & (set(questions["train"]) | set(questions["val"]))
    assert len(set(questions["test"])) == len(questions["test"]) > 0
    # held-out problems are rows scorable by the DAPO reward function
    row = val.iloc[0]
    answer = row.reward_model["ground_truth"]
    assert compute_score(DATA_SOURCE, f"\\boxed{{{answer}}}", answer)["acc"] is True
    tok = AutoTokenizer.from_pretrained(root / "model")
    model = AutoModelForCausalLM.from_pretrained(root / "model")
    assert model.config.eos_token_id == tok.eos_token_id

    logs.clear()
    assert ensure_built(recipe, log=logs.append) == root
    assert logs == []  # cached: nothing rebuilt
    assert Recipe(**{**TINY, "n_train": 65}).key() != recipe.key()


@pytest.mark.timeout(300)
def test_prepare_rewrites_embedded_paths_and_names_a_bad_key(cache):
    from omegaconf import OmegaConf

    from reweight.embedded import Recipe, prepare
    from reweight.train import compose_config

    cfg = compose_config("embedded")
    assert cfg.actor_rollout_ref.model.path == "embedded://model"
    keys = prepare(cfg, recipe=Recipe(**TINY), log=lambda *_: None)
    assert sorted(keys) == ["actor_rollout_ref.model.path", "data.train_files", "data.val_files"]
    assert cfg.data.train_files.endswith("train.parquet") and "embedded://" not in OmegaConf.to_yaml(cfg)

    # a user's own model is left alone; only the embedded data is built/resolved
    cfg = compose_config("embedded", ["actor_rollout_ref.model.path=/my/model"])
    prepare(cfg, recipe=Recipe(**TINY), log=lambda *_: None)
    assert cfg.actor_rollout_ref.model.path == "/my/model"

    cfg = compose_config("embedded", ["data.val_files=embedded://nope.parquet"])
    with pytest.raises(ValueError, match=r"data.val_files='embedded://nope.parquet': unknown embedded asset"):
        prepare(cfg, recipe=Recipe(**TINY), log=lambda *_: None)
