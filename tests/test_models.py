"""reweight.models: model paths (HF dirs, hub ids, real verl FSDP checkpoints), dtype/EOS/tokenizer rules, and every
tool run on a checkpoint directory.

The checkpoint is made the way verl's trainer makes one, in this process and without Ray: a one-rank gloo process
group, the tiny Qwen2 model loaded in fp32 from an HF directory and wrapped with verl's ``apply_fsdp2`` (as verl's FSDP2
engine does), two AdamW steps, each saved with verl's ``FSDPCheckpointManager`` into ``exp/global_step_N/actor`` and
``latest_checkpointed_iteration.txt`` written as ``RayPPOTrainer._save_checkpoint`` writes it. Step 1 is saved with
``checkpoint.save_contents`` including ``hf_model`` (verl writes full HF weights), step 2 without (it needs verl's merger).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

import reweight.models as models
from reweight.data.synthetic import make_problems, to_verl_row
from reweight.models import (
    TokenizerMismatchError,
    check_same_tokenizer,
    eos_token_ids,
    load_model,
    pick_dtype,
    resolve_model_path,
)


def _full_state_dict(model) -> dict[str, torch.Tensor]:
    """The unsharded weights of an FSDP2 model (one rank: each DTensor's full tensor), copied."""
    from torch.distributed.tensor import DTensor

    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tiny_tokenizer):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy
    from transformers import AutoModelForCausalLM
    from verl.utils.checkpoint.fsdp_checkpoint_manager import FSDPCheckpointManager
    from verl.utils.fsdp_utils import apply_fsdp2

    from reweight.tiny import build_model, save_tiny

    tok = tiny_tokenizer
    root = tmp_path_factory.mktemp("verl_ckpt")
    init = save_tiny(root / "init", build_model(len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, seed=5), tok)
    exp = root / "exp"  # trainer.default_local_dir
    assert not dist.is_initialized()
    dist.init_process_group("gloo", init_method=f"file://{root / 'pg_init'}", rank=0, world_size=1)
    try:
        model = AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32)  # verl trains fp32 master weights
        mesh = init_device_mesh("cpu", (1,), mesh_dim_names=("fsdp",))
        mp = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)  # the embedded config's
        apply_fsdp2(model, {"mesh": mesh, "mp_policy": mp, "reshard_after_forward": True}, {})
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        ids = tok([p.prompt for p in make_problems(4, seed=2)], return_tensors="pt", padding=True)["input_ids"]
        weights = {}
        for step, contents in ((1, ["model", "optimizer", "extra", "hf_model"]), (2, ["model", "optimizer", "extra"])):
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            weights[step] = _full_state_dict(model)
            manager = FSDPCheckpointManager(model=model, optimizer=optimizer, lr_scheduler=None, processing_class=tok,
                                            checkpoint_config={"save_contents": contents, "load_contents": contents})
            manager.save_checkpoint(str(exp / f"global_step_{step}" / "actor"), global_step=step)
            torch.save({}, exp / f"global_step_{step}" / "data.pt")  # the dataloader state verl saves beside actor/
            with open(exp / "latest_checkpointed_iteration.txt", "w") as f:  # as RayPPOTrainer._save_checkpoint
                f.write(str(step))
    finally:
        dist.destroy_process_group()
    assert not torch.equal(weights[1]["model.embed_tokens.weight"], weights[2]["model.embed_tokens.weight"])

    # Reference HF directories made from the in-memory weights (not from the checkpoint files). verl's merger writes
    # bf16 (FSDPModelMerger casts every shard with .bfloat16()), so the merged step-2 reference is bf16-rounded.
    refs = {}
    for name, sd in (("ref1", weights[1]), ("ref2", {k: v.bfloat16().float() for k, v in weights[2].items()})):
        ref = AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32)
        ref.load_state_dict(sd)
        refs[name] = str(save_tiny(root / name, ref, tok))
    return SimpleNamespace(root=root, init=str(init), exp=exp, step1=exp / "global_step_1", step2=exp / "global_step_2",
                           weights=weights, tok=tok, **refs)


@pytest.fixture
def count_merges(monkeypatch):
    """Counts calls of verl's merger (the real one runs)."""
    calls = []
    real = models._merge

    def counting(actor, target, log):
        calls.append(Path(actor))
        return real(actor, target, log)

    monkeypatch.setattr(models, "_merge", counting)
    return calls


def _copy_experiment(ckpt, dest: Path, steps=(2,), tracker: int | None = 2) -> Path:
    """A fresh experiment directory with copies of some steps (so a test owns its export cache)."""
    for step in steps:
        shutil.copytree(ckpt.exp / f"global_step_{step}", dest / f"global_step_{step}",
                        ignore=shutil.ignore_patterns("hf_export*"))
    if tracker is not None:
        (dest / "latest_checkpointed_iteration.txt").write_text(str(tracker))
    return dest


def _assert_weights(path: str, expected: dict[str, torch.Tensor], disk_dtype: torch.dtype) -> None:
    """The HF directory ``path`` stores ``expected`` as ``disk_dtype`` bit for bit, and loads (fp32 on CPU) as exactly that."""
    from safetensors.torch import load_file

    stored = load_file(Path(path) / "model.safetensors")
    assert stored and set(stored) <= set(expected)  # tied lm_head.weight is not stored
    for key, value in stored.items():
        assert value.dtype == disk_dtype and torch.equal(value, expected[key].to(disk_dtype)), key
    loaded = load_model(path, device="cpu").state_dict()
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        assert loaded[key].dtype == torch.float32 and torch.equal(loaded[key], value.to(disk_dtype).float()), key


# ---------------------------------------------------------------------------------------------- resolving paths


def test_hf_model_checkpoint_uses_verls_own_hf_weights(ckpt, count_merges):
    actor = ckpt.step1 / "actor"
    for path in (ckpt.step1, actor, actor / "huggingface"):
        assert resolve_model_path(str(path)) == str(actor / "huggingface")
    _assert_weights(str(actor / "huggingface"), ckpt.weights[1], torch.float32)  # full precision, bit for bit
    assert count_merges == [] and not (actor / "hf_export").exists()


def test_step_and_experiment_dirs_export_once_with_verls_merger(ckpt, tmp_path, count_merges, capsys):
    exp = _copy_experiment(ckpt, tmp_path / "exp")
    actor = exp / "global_step_2" / "actor"
    export = actor / "hf_export"
    assert resolve_model_path(str(exp / "global_step_2")) == str(export)
    assert count_merges == [actor]
    out, err = capsys.readouterr()
    assert "exporting verl checkpoint" in err and out == ""  # verl's chatter goes to actor/hf_export.log, not stdout
    assert "Saving model to" in (actor / "hf_export.log").read_text()
    _assert_weights(str(export), ckpt.weights[2], torch.bfloat16)
    assert ckpt.tok.get_vocab() == models.load_tokenizer(str(export)).get_vocab()
    mtimes = {p.name: p.stat().st_mtime_ns for p in export.iterdir()}

    # the experiment directory means its latest step (the tracker's); the export is reused, not redone
    assert resolve_model_path(str(exp)) == str(export)
    assert resolve_model_path(str(actor)) == str(export)
    assert count_merges == [actor] and {p.name: p.stat().st_mtime_ns for p in export.iterdir()} == mtimes
    assert "exporting" not in capsys.readouterr().err

    # the step saved again (its shard file rewritten): the stale export is replaced
    shard = actor / "model_world_size_1_rank_0.pt"
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    assert resolve_model_path(str(exp)) == str(export) and count_merges == [actor, actor]
    _assert_weights(str(export), ckpt.weights[2], torch.bfloat16)


def test_half_written_export_is_never_used(ckpt, tmp_path, count_merges):
    exp = _copy_experiment(ckpt, tmp_path / "exp")
    actor = exp / "global_step_2" / "actor"
    # a killed export: its temporary directory, with a config but no usable weights
    tmp = actor / "hf_export.tmp-4242-deadbeef"
    shutil.copytree(actor / "huggingface", tmp)
    (tmp / "model.safetensors").write_bytes(b"truncated")
    assert resolve_model_path(str(exp)) == str(actor / "hf_export")
    assert count_merges == [actor] and not tmp.exists()
    _assert_weights(str(actor / "hf_export"), ckpt.weights[2], torch.bfloat16)


def test_concurrent_callers_export_once(ckpt, tmp_path, monkeypatch):
    import fcntl
    import threading

    exp = _copy_experiment(ckpt, tmp_path / "exp")
    calls, lock_requests = [], []
    second_at_lock = threading.Event()
    real_merge, real_flock = models._merge, fcntl.flock

    def flock(handle, op):  # the export lock: note each request for it before waiting on it
        if op == fcntl.LOCK_EX:
            lock_requests.append(threading.current_thread().name)
            if len(lock_requests) == 2:
                second_at_lock.set()
        return real_flock(handle, op)

    def merge_once_the_second_caller_waits(actor, target, log):
        calls.append(actor)
        assert second_at_lock.wait(timeout=60), "the second caller never asked for the export lock"
        return real_merge(actor, target, log)

    monkeypatch.setattr(fcntl, "flock", flock)
    monkeypatch.setattr(models, "_merge", merge_once_the_second_caller_waits)
    results = []
    threads = [threading.Thread(target=lambda: results.append(resolve_model_path(str(exp)))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    export = exp / "global_step_2" / "actor" / "hf_export"
    assert results == [str(export)] * 2 and len(calls) == 1  # the second waited on the lock, then reused
    _assert_weights(str(export), ckpt.weights[2], torch.bfloat16)


def test_merger_failure_leaves_no_export(ckpt, tmp_path, monkeypatch):
    exp = _copy_experiment(ckpt, tmp_path / "exp")
    actor = exp / "global_step_2" / "actor"

    def failing(actor, target, log):
        (Path(target) / "config.json").write_text("{}")  # a partial write, then a crash
        raise OSError("disk full")

    monkeypatch.setattr(models, "_merge", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        resolve_model_path(str(exp))
    assert not (actor / "hf_export").exists() and not list(actor.glob("hf_export.tmp-*"))


def test_latest_step_tracker_first_then_highest_complete_step(ckpt, tmp_path):
    by_tracker = tmp_path / "by_tracker"  # the tracker names step 1 although step 2 exists
    by_tracker.mkdir()
    for step in (1, 2):
        (by_tracker / f"global_step_{step}").symlink_to(ckpt.exp / f"global_step_{step}")
    (by_tracker / "latest_checkpointed_iteration.txt").write_text("1")
    assert Path(resolve_model_path(str(by_tracker))).resolve() == (ckpt.step1 / "actor" / "huggingface").resolve()

    no_tracker = tmp_path / "no_tracker"
    no_tracker.mkdir()
    (no_tracker / "global_step_1").symlink_to(ckpt.step1)
    (no_tracker / "global_step_10" / "actor").mkdir(parents=True)  # a save that never completed
    assert models.latest_step_dir(no_tracker) == no_tracker / "global_step_1"

    bad = tmp_path / "bad_tracker"
    bad.mkdir()
    (bad / "latest_checkpointed_iteration.txt").write_text("x")
    with pytest.raises(ValueError, match="expected a step number"):
        resolve_model_path(str(bad))
    (bad / "latest_checkpointed_iteration.txt").write_text("7")
    with pytest.raises(FileNotFoundError, match="global_step_7"):
        resolve_model_path(str(bad))


def test_missing_local_paths_and_unknown_dirs_are_refused_without_the_hub(tmp_path, monkeypatch):
    import transformers

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: pytest.fail("hub/loader called"))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("loader called"))
    for path in (str(tmp_path / "nowhere"), "./no_model_here", "~/no_model_here_either", "runs/exp/no_step"):
        with pytest.raises(FileNotFoundError, match="no such file or directory") as err:
            models.load_tokenizer(path)
        assert repr(path) in str(err.value)
        with pytest.raises(FileNotFoundError):
            load_model(path, device="cpu")
    assert resolve_model_path("Qwen/Qwen2.5-Math-7B") == "Qwen/Qwen2.5-Math-7B"  # hub ids pass through
    assert resolve_model_path("openai-community/gpt2") == "openai-community/gpt2"

    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    for path in (tmp_path / "empty", tmp_path / "file.txt"):
        with pytest.raises(ValueError, match="expected a Hugging Face directory .* or a verl FSDP checkpoint"):
            resolve_model_path(str(path))
    (tmp_path / "step" / "actor").mkdir(parents=True)  # a step dir whose actor save never completed
    with pytest.raises(ValueError, match="fsdp_config.json"):
        resolve_model_path(str(tmp_path / "step"))


# ---------------------------------------------------------------------------------------------- the rules


def test_dtype_rule():
    assert pick_dtype("auto", "cpu") == torch.float32 and pick_dtype("auto", "cuda") == torch.bfloat16
    assert [pick_dtype(d, "cpu") for d in ("bf16", "fp16", "fp32")] == [torch.bfloat16, torch.float16, torch.float32]
    with pytest.raises(ValueError, match="float32"):
        pick_dtype("float32", "cpu")


def test_eos_rule_is_the_union_of_tokenizer_config_and_generation_config():
    tok = SimpleNamespace(eos_token_id=2)
    a = SimpleNamespace(config=SimpleNamespace(eos_token_id=5), generation_config=SimpleNamespace(eos_token_id=[7, 2]))
    b = SimpleNamespace(config=SimpleNamespace(eos_token_id=None), generation_config=SimpleNamespace(eos_token_id=9))
    assert eos_token_ids(tok, a) == [2, 5, 7] and eos_token_ids(tok, a, b) == [2, 5, 7, 9]
    assert eos_token_ids(SimpleNamespace(eos_token_id=None)) == []
    with pytest.raises(ValueError, match="no EOS"):
        eos_token_ids(SimpleNamespace(eos_token_id=None), required=True)


def test_tokenizer_rule_counts_added_tokens(tiny_tokenizer):
    import copy

    added = copy.deepcopy(tiny_tokenizer)
    added.add_tokens(["<|extra|>"])
    with pytest.raises(TokenizerMismatchError, match="vocabulary sizes") as err:
        check_same_tokenizer(tiny_tokenizer, added, "a", "b")
    assert "'<|extra|>'" in str(err.value)


# ---------------------------------------------------------------------------------------------- every tool


def test_reweight_eval_sample_and_support_on_checkpoints_equal_the_reference_weights(ckpt, tmp_path, capsys):
    from reweight.evaluation.cli import main
    from reweight.evaluation.records import read_results

    data = tmp_path / "data.parquet"
    pd.DataFrame([to_verl_row(p, "test", i) for i, p in enumerate(make_problems(2, seed=11))]).to_parquet(data)
    common = ["--data", str(data), "--n", "2", "--max-new-tokens", "6", "--no-progress", "--device", "cpu"]
    assert main(["sample", "--model", str(ckpt.exp), "--out", str(tmp_path / "ckpt.jsonl"), *common]) == 0
    assert main(["sample", "--model", ckpt.ref2, "--out", str(tmp_path / "ref.jsonl"), *common]) == 0
    meta, got = read_results(tmp_path / "ckpt.jsonl")
    _, want = read_results(tmp_path / "ref.jsonl")
    assert meta["model"] == str(ckpt.exp) and meta["model_path"] == str(ckpt.step2 / "actor" / "hf_export")
    assert [r.responses for r in got] == [r.responses for r in want] and len(got) == 2

    support = ["--base-results", str(tmp_path / "ckpt.jsonl"), "--rl-results", str(tmp_path / "ckpt.jsonl"), "--no-progress",
               "--device", "cpu"]
    assert main(["support", "--base", str(ckpt.step1), "--rl", str(ckpt.exp), "--out", str(tmp_path / "c.json"), *support]) == 0
    assert main(["support", "--base", ckpt.ref1, "--rl", ckpt.ref2, "--out", str(tmp_path / "r.json"), *support]) == 0
    got, want = (json.loads((tmp_path / name).read_text()) for name in ("c.json", "r.json"))
    assert got["problems"] == want["problems"] and got["aggregate"] == want["aggregate"]

    # more training: the experiment's latest step moves on, and a resume of the same command refuses to mix models
    exp = tmp_path / "exp"
    exp.mkdir()
    for step in (1, 2):
        (exp / f"global_step_{step}").symlink_to(ckpt.exp / f"global_step_{step}")
    (exp / "latest_checkpointed_iteration.txt").write_text("1")
    argv = ["sample", "--model", str(exp), "--out", str(tmp_path / "moving.jsonl"), *common, "--limit", "1"]
    assert main(argv) == 0
    (exp / "latest_checkpointed_iteration.txt").write_text("2")
    capsys.readouterr()
    assert main([*argv[:-1], "2"]) == 2 and "model_path=" in capsys.readouterr().err


def test_reweight_analyze_on_checkpoints_matches_token_metrics_of_the_reference_weights(ckpt, tmp_path):
    from transformers import AutoModelForCausalLM

    from reweight.analysis import METRIC_NAMES, token_metrics
    from reweight.analysis.cli import main

    rows = [{"id": f"q{i}", "prompt": p.prompt, "response": p.solution, "source": "rl"}
            for i, p in enumerate(make_problems(2, seed=3))]
    responses = tmp_path / "responses.jsonl"
    pd.DataFrame(rows).to_json(responses, orient="records", lines=True)
    out = tmp_path / "analysis"
    assert main(["--base", str(ckpt.step1), "--rl", str(ckpt.exp), "--responses", str(responses),
                 "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    base, rl = (AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).eval() for p in (ckpt.ref1, ckpt.ref2))
    tokens = pq.read_table(out / "tokens.parquet").to_pandas()
    samples = pq.read_table(out / "samples.parquet").to_pandas()
    assert len(samples) == 2 and len(tokens) == samples["n_response_tokens"].sum() > 0
    for _, s in samples.iterrows():
        p, r = list(s["prompt_ids"]), list(s["response_ids"])
        ids = torch.tensor([p + r])
        resp = torch.zeros_like(ids)
        resp[0, len(p):] = 1
        want = token_metrics(base, rl, input_ids=ids, attention_mask=torch.ones_like(ids), response_mask=resp)
        got = tokens[tokens["sample_id"] == s["sample_id"]].sort_values("position")
        for m in METRIC_NAMES:
            np.testing.assert_allclose(got[m].to_numpy(), want[m][0, len(p):].numpy(), atol=1e-5)


def test_reweight_decode_on_checkpoints_equals_the_reference_weights(ckpt, tmp_path, capsys):
    from reweight.decoding.cli import main

    common = ["--prompt", "What is 3 + 4?", "--prompt", "Compute 2 * 5.", "--n", "2", "--max-new-tokens", "5",
              "--criterion", "logp_diff", "--tau", "-0.1", "--no-progress", "--device", "cpu"]
    assert main(["generate", "--base", str(ckpt.step1), "--rl", str(ckpt.exp), "--out", str(tmp_path / "c.jsonl"), *common]) == 0
    assert main(["generate", "--base", ckpt.ref1, "--rl", ckpt.ref2, "--out", str(tmp_path / "r.jsonl"), *common]) == 0
    got = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    want = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len(got) == 4 and got == want


def test_the_command_reweight_train_prints_evaluates_the_final_checkpoint(ckpt, tmp_path, capsys):
    import shlex

    from omegaconf import OmegaConf

    from reweight.evaluation.cli import main
    from reweight.evaluation.records import read_results
    from reweight.train import evaluation_command

    data = tmp_path / "val.parquet"
    pd.DataFrame([to_verl_row(p, "test", i) for i, p in enumerate(make_problems(2, seed=5))]).to_parquet(data)
    cfg = OmegaConf.create({"trainer": {"default_local_dir": str(ckpt.exp)},
                            "data": {"val_files": [str(data)], "max_response_length": 4}})
    assert evaluation_command(OmegaConf.create({"trainer": {"default_local_dir": str(tmp_path)}, "data": {"val_files": str(data)}})) is None
    argv = shlex.split(evaluation_command(cfg))
    assert argv[:2] == ["reweight-eval", "sample"] and argv[argv.index("--max-new-tokens") + 1] == "4"
    out = Path(argv[argv.index("--out") + 1])
    assert out.parent.parent == ckpt.exp
    try:  # the printed command, made cheap (later flags win in argparse)
        assert main(argv[1:] + ["--n", "1", "--device", "cpu", "--no-progress"]) == 0
        meta, results = read_results(out)
        assert meta["model_path"] == str(ckpt.step2 / "actor" / "hf_export") and len(results) == 2
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
