"""Failure modes a user meets with broken files, a busy machine or a damaged checkpoint (issue #31, point 8).

Each is refused in one line ``<prog>: error: <key or flag>=<value>: <why>`` before anything expensive starts
(tripwires on ``ray.init``, model loading and the embedded build), or has a documented recovery:

- broken input files: a data file that is not parquet, has no rows or lacks the columns verl reads; a model
  directory without a loadable config.json, complete weights or a tokenizer (exit 2);
- a damaged checkpoint where verl would resume: refused naming the file, with the overrides to resume from the
  previous good step; nothing is moved or deleted (exit 2);
- unwritable output locations, for every CLI: refused naming the option (exit 2);
- a local Ray node that does not register within Ray's fixed 30 s: started once more, then one line and exit
  status 75 (EX_TEMPFAIL), not a traceback.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import expensive_work_fails, minimal_run_files

PROC = "/proc/reweight-no-such-dir"  # nothing can be created under /proc, not even by root


@pytest.fixture
def run(tmp_path, monkeypatch):
    """Minimal valid inputs in ``tmp_path`` (conftest.minimal_run_files) and tripwires on everything expensive."""
    expensive_work_fails(monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REWEIGHT_DEBUG", raising=False)
    return minimal_run_files(tmp_path)


def _main(tool: str):
    from importlib import import_module

    return import_module({
        "train": "reweight.train", "eval": "reweight.evaluation.cli", "analyze": "reweight.analysis.cli",
        "decode": "reweight.decoding.cli", "study": "reweight.study.cli", "prepare-data": "reweight.data.prepare",
        "launch": "reweight.launch.cli",
    }[tool]).main


def _call(tool: str, argv: list[str]) -> int:
    try:
        return int(_main(tool)(argv) or 0)
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 1


def _one_line(capsys, prog: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    return lines[0]


def _refused(tool: str, argv: list[str], capsys, code: int = 2) -> str:
    import ray

    assert _call(tool, argv) == code
    assert not ray.is_initialized()
    return _one_line(capsys, f"reweight-{tool}" + (f" {argv[0]}" if tool in ("eval", "launch") else ""))


def _with(overrides: list[str], **changes: str) -> list[str]:
    """``overrides`` with the given keys (dots as __) replaced."""
    keys = {k.replace("__", "."): v for k, v in changes.items()}
    return [o for o in overrides if o.split("=", 1)[0] not in keys] + [f"{k}={v}" for k, v in keys.items()]


# ------------------------------------------------------------------------------------------ data files


ROW = {"data_source": "t", "prompt": [[{"role": "user", "content": "1+1?"}]], "reward_model": [{"style": "rule", "ground_truth": "2"}]}


def _broken_data(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "broken.parquet"
    if kind == "text":
        path.write_text("question,answer\n1+1,2\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "cut":  # a parquet file whose end (the footer) was lost
        pd.DataFrame(ROW).to_parquet(path)
        path.write_bytes(path.read_bytes()[:-20])
    elif kind == "columns":
        pd.DataFrame({"question": ["1+1?"], "answer": ["2"]}).to_parquet(path)
    elif kind == "no_reward":
        pd.DataFrame({k: v for k, v in ROW.items() if k != "reward_model"}).to_parquet(path)
    elif kind == "no_ground_truth":
        pd.DataFrame({**ROW, "reward_model": [{"style": "rule", "answer": "2"}]}).to_parquet(path)
    elif kind == "zero_rows":
        pd.DataFrame(ROW).iloc[:0].to_parquet(path)
    elif kind == "csv":
        path = tmp_path / "train.csv"
        path.write_text("prompt\n1+1\n")
    elif kind == "dir":
        path = tmp_path / "shards"
        path.mkdir()
        pd.DataFrame(ROW).to_parquet(path / "part-0.parquet")
    return path


DATA_CASES = [
    ("text", "not a parquet file"),
    ("empty", "an empty file"),
    ("cut", "not a parquet file"),
    ("columns", "no columns 'prompt', 'data_source', 'reward_model', which verl reads (it has 'question', 'answer')"),
    ("no_reward", "no column 'reward_model', which verl reads"),
    ("no_ground_truth", "column 'reward_model' has no 'ground_truth' field"),
    ("zero_rows", "a parquet file with no rows"),
    ("csv", "verl reads only files ending in .parquet, .json, .jsonl"),
    ("dir", "a directory; verl reads files ending in .parquet, .json, .jsonl"),
]


@pytest.mark.parametrize("key", ["data.train_files", "data.val_files"])
@pytest.mark.parametrize("kind, why", DATA_CASES, ids=[k for k, _ in DATA_CASES])
def test_a_data_file_verl_cannot_read_is_refused_before_ray(run, tmp_path, capsys, key, kind, why):
    path = _broken_data(tmp_path, kind)
    line = _refused("train", _with(run, **{key.replace(".", "__"): str(path)}), capsys)
    assert f"{key}='{path}': {why}" in line, line


def test_the_prompt_column_is_the_one_data_prompt_key_names(run, tmp_path, capsys):
    """data.prompt_key=question: that column must be there (the default file has 'prompt', not 'question')."""
    line = _refused("train", [*run, "data.prompt_key=question"], capsys)
    assert f"data.train_files='{tmp_path / 'train.parquet'}': no column 'question', which verl reads" in line, line


def test_a_readable_data_file_passes_and_a_custom_dataset_class_is_not_held_to_verls_columns(run, tmp_path, capsys):
    from reweight.checks import check_data_files
    from reweight.train import compose_config

    check_data_files(compose_config("embedded", run))  # the minimal files have what verl reads
    path = _broken_data(tmp_path, "columns")
    cfg = compose_config("embedded", _with(run, data__train_files=str(path)))
    with pytest.raises(ValueError, match="no columns"):
        check_data_files(cfg)
    cfg = compose_config("embedded", [*_with(run, data__train_files=str(path)), "data.custom_cls.path=/x/ds.py",
                                      "data.custom_cls.name=DS"])
    check_data_files(cfg)  # a dataset class of the user's reads its own columns


# ------------------------------------------------------------------------------------------ model dirs


def _broken_model(tmp_path: Path, kind: str) -> Path:
    good = Path(next(o for o in minimal_run_files(tmp_path / "good") if o.startswith("actor_rollout_ref.model.path=")).split("=", 1)[1])
    path = tmp_path / f"model_{kind}"
    path.mkdir()
    if kind == "empty":
        return path
    for f in good.iterdir():
        (path / f.name).write_bytes(f.read_bytes())
    if kind == "no_weights":
        (path / "model.safetensors").unlink()
    elif kind == "empty_weights":
        (path / "model.safetensors").write_bytes(b"")
    elif kind == "cut_weights":
        (path / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes()[:-2])
    elif kind == "no_tokenizer":
        (path / "tokenizer.json").unlink()
    elif kind == "bad_config":
        (path / "config.json").write_text('{"model_type": "qwen2",')
    elif kind == "no_model_type":
        (path / "config.json").write_text('{"hidden_size": 8}')
    elif kind == "unknown_model_type":
        (path / "config.json").write_text('{"model_type": "no-such-architecture"}')
    elif kind == "missing_shard":
        (path / "model.safetensors").rename(path / "model-00001-of-00002.safetensors")
        index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
        (path / "model.safetensors.index.json").write_text(json.dumps(index))
    elif kind == "verl_checkpoint":
        (path / "actor").mkdir()
    return path


MODEL_CASES = [
    ("empty", "no config.json in {path} (the directory is empty): not a Hugging Face model directory"),
    ("no_weights", "no weights (model.safetensors / pytorch_model.bin or a sharded index)"),
    ("empty_weights", "model.safetensors is empty"),
    ("cut_weights", "model.safetensors is truncated"),
    ("no_tokenizer", "no tokenizer files in {path}"),
    ("bad_config", "config.json is not JSON"),
    ("no_model_type", "config.json has no model_type"),
    ("unknown_model_type", "model_type 'no-such-architecture' is unknown to transformers"),
    ("missing_shard", "model.safetensors.index.json lists model-00002-of-00002.safetensors, which is not there"),
    ("verl_checkpoint", "a verl checkpoint, not a Hugging Face model directory"),
]


@pytest.mark.parametrize("kind, why", MODEL_CASES, ids=[k for k, _ in MODEL_CASES])
def test_a_model_directory_verl_cannot_load_is_refused_before_ray(run, tmp_path, capsys, kind, why):
    path = _broken_model(tmp_path, kind)
    line = _refused("train", _with(run, actor_rollout_ref__model__path=str(path)), capsys)
    assert f"actor_rollout_ref.model.path='{path}': " in line, line
    assert why.format(path=path) in line, line


def test_a_safetensors_file_is_held_to_the_length_its_header_gives(tmp_path):
    from safetensors.torch import save_file

    from reweight.file_checks import _safetensors_problem

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.ones(4, 4), "b": torch.zeros(3)}, str(path))
    assert _safetensors_problem(path) is None
    data = path.read_bytes()
    path.write_bytes(data[:-1])  # one byte of the last tensor lost
    assert f"w.safetensors is truncated ({len(data) - 1} bytes; its header describes {len(data)})" == _safetensors_problem(path)
    path.write_bytes(data[:6])
    assert _safetensors_problem(path) == "w.safetensors is truncated (6 bytes)"


def test_the_tokenizer_and_config_are_looked_for_where_verl_reads_them(run, tmp_path, capsys):
    """tokenizer_path / hf_config_path elsewhere: the model dir needs no tokenizer, the named one does."""
    from reweight.checks import check_model_files
    from reweight.train import compose_config

    model = _broken_model(tmp_path, "no_tokenizer")
    tokenizer_dir = tmp_path / "tok"
    tokenizer_dir.mkdir()
    cfg = compose_config("embedded", [*_with(run, actor_rollout_ref__model__path=str(model)),
                                      f"actor_rollout_ref.model.tokenizer_path={tokenizer_dir}"])
    with pytest.raises(ValueError, match=f"no tokenizer files in {tokenizer_dir}"):
        check_model_files(cfg)
    (tokenizer_dir / "tokenizer.json").write_text("{}")
    check_model_files(cfg)
    cfg = compose_config("embedded", [*_with(run, actor_rollout_ref__model__path=str(model)),
                                      "actor_rollout_ref.model.tokenizer_path=Qwen/Qwen2.5-Math-7B"])
    check_model_files(cfg)  # a hub id: its loader reports (not checked here, no hub access)


# ------------------------------------------------------------------------------------------ checkpoints


def _checkpoint(root: Path, steps=(1, 2), world_size: int = 2) -> Path:
    """verl's layout of ``trainer.default_local_dir`` (as a 2-rank CPU run of this project writes it): each
    ``global_step_N`` holds actor/{model,optim,extra_state}_world_size_W_rank_R.pt, fsdp_config.json and data.pt;
    the tracker file names the last step."""
    for step in steps:
        actor = root / f"global_step_{step}" / "actor"
        (actor / "huggingface").mkdir(parents=True)
        for rank in range(world_size):
            for kind in ("model", "optim", "extra_state"):
                torch.save({"w": torch.full((64,), float(step))}, actor / f"{kind}_world_size_{world_size}_rank_{rank}.pt")
        (actor / "fsdp_config.json").write_text('{"FSDP_version": 2, "world_size": 2}')
        torch.save({"epoch": 0}, root / f"global_step_{step}" / "data.pt")
    (root / "latest_checkpointed_iteration.txt").write_text(str(steps[-1]))
    return root


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def _damage(root: Path, kind: str) -> str:
    """Damage global_step_2 of ``root``; return the file (relative to the step) the message must name."""
    step = root / "global_step_2"
    if kind == "emptied":
        (step / "actor/model_world_size_2_rank_1.pt").write_bytes(b"")
        return "actor/model_world_size_2_rank_1.pt is empty"
    if kind == "cut":
        f = step / "actor/optim_world_size_2_rank_0.pt"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        return "actor/optim_world_size_2_rank_0.pt is truncated or not a torch file"
    if kind == "data_pt":
        (step / "data.pt").write_bytes((step / "data.pt").read_bytes()[:100])
        return "data.pt is truncated or not a torch file"
    if kind == "missing_rank":
        (step / "actor/extra_state_world_size_2_rank_1.pt").unlink()
        return "actor/extra_state_world_size_2_rank_1.pt is missing"
    if kind == "no_fsdp_config":
        (step / "actor/fsdp_config.json").unlink()
        return "actor/fsdp_config.json is missing"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["emptied", "cut", "data_pt", "missing_rank", "no_fsdp_config"])
def test_a_damaged_latest_checkpoint_is_refused_naming_the_file_and_the_good_step_to_resume_from(run, tmp_path, capsys, kind):
    root = _checkpoint(tmp_path / "ckpt")
    what = _damage(root, kind)
    before = _snapshot(root)
    line = _refused("train", [*run, "trainer.total_training_steps=5"], capsys)
    assert f"trainer.default_local_dir='{root}': the latest checkpoint global_step_2 is damaged: {what}" in line, line
    assert (f"To resume from global_step_1 add trainer.resume_mode=resume_path "
            f"trainer.resume_from_path={root / 'global_step_1'}") in line, line
    assert "to start afresh add trainer.resume_mode=disable" in line
    assert _snapshot(root) == before  # nothing moved, deleted or written


def test_the_recovery_the_refusal_offers_passes_the_pre_flight(run, tmp_path, capsys):
    from reweight.checks import check_paths
    from reweight.train import compose_config

    root = _checkpoint(tmp_path / "ckpt")
    _damage(root, "emptied")
    good = root / "global_step_1"
    check_paths(compose_config("embedded", [*run, "trainer.resume_mode=resume_path", f"trainer.resume_from_path={good}"]))
    check_paths(compose_config("embedded", [*run, "trainer.resume_mode=disable"]))
    with pytest.raises(ValueError, match=f"trainer.resume_from_path='{root / 'global_step_2'}': actor/model_world_size_2_rank_1.pt is empty"):
        check_paths(compose_config("embedded", [*run, "trainer.resume_mode=resume_path",
                                                f"trainer.resume_from_path={root / 'global_step_2'}"]))
    _checkpoint(tmp_path / "whole")
    check_paths(compose_config("embedded", _with(run, trainer__default_local_dir=str(tmp_path / "whole"))))


def test_without_a_good_earlier_step_only_starting_afresh_is_offered(run, tmp_path, capsys):
    root = _checkpoint(tmp_path / "ckpt", steps=(2,))
    _damage(root, "emptied")
    line = _refused("train", run, capsys)
    assert "is damaged: actor/model_world_size_2_rank_1.pt is empty" in line and "resume_from_path" not in line, line
    assert line.endswith("nothing was changed). To start afresh add trainer.resume_mode=disable"), line


def test_a_tracker_naming_a_missing_step_beside_other_steps_is_refused(run, tmp_path, capsys):
    """verl would train from scratch and save over global_step_1, 2: refused, offering the newest that is there."""
    root = _checkpoint(tmp_path / "ckpt", steps=(1, 2, 10))
    import shutil

    shutil.rmtree(root / "global_step_10")
    line = _refused("train", run, capsys)
    assert "latest_checkpointed_iteration.txt names step 10 but global_step_10 does not exist (there are global_step_1, global_step_2)" in line
    assert f"trainer.resume_from_path={root / 'global_step_2'}" in line


def test_a_tracker_without_a_step_number_is_refused(run, tmp_path, capsys):
    root = _checkpoint(tmp_path / "ckpt")
    (root / "latest_checkpointed_iteration.txt").write_text("")
    line = _refused("train", run, capsys)
    assert f"{root / 'latest_checkpointed_iteration.txt'} holds '', not a step number" in line, line


# ------------------------------------------------------------------------------------------ outputs


def _outputs(tmp_path: Path, run: list[str]) -> list[tuple[str, list[str], str]]:
    model = next(o for o in run if o.startswith("actor_rollout_ref.model.path=")).split("=", 1)[1]
    data = str(tmp_path / "val.parquet")
    responses = tmp_path / "responses.jsonl"
    responses.write_text('{"prompt": "1+1", "response": "2", "source": "base"}\n')
    file_as_dir = str(responses / "x")
    return [
        ("train", _with(run, trainer__default_local_dir=f"{PROC}/ckpt"), f"trainer.default_local_dir='{PROC}/ckpt': cannot be created"),
        ("train", _with(run, trainer__default_local_dir=str(responses)), f"trainer.default_local_dir='{responses}': {responses} is a file"),
        ("eval", ["sample", "--model", model, "--data", data, "--out", f"{PROC}/e.jsonl"], f"--out='{PROC}/e.jsonl': cannot be created"),
        ("eval", ["sample", "--model", model, "--data", data, "--out", file_as_dir], f"--out='{file_as_dir}': {responses} is a file"),
        ("eval", ["score", "--data", data, "--responses", str(responses), "--out", f"{PROC}/s.jsonl"], f"--out='{PROC}/s.jsonl'"),
        ("eval", ["report", "--results", str(responses), "--out-dir", f"{PROC}/r"], f"--out-dir='{PROC}/r': cannot be created"),
        ("analyze", ["--base", model, "--rl", model, "--responses", str(responses), "--out", f"{PROC}/a"], f"--out='{PROC}/a'"),
        ("decode", ["generate", "--base", model, "--rl", model, "--prompt", "1+1?", "--out", f"{PROC}/g.jsonl"], f"--out='{PROC}/g.jsonl'"),
        ("decode", ["sweep", "--base", model, "--rl", model, "--data", data, "--out", f"{PROC}/sw"], f"--out='{PROC}/sw'"),
        ("study", ["--dry-run", "--out", f"{PROC}/study", *run], f"--out='{PROC}/study': cannot be created"),
        ("prepare-data", ["--out-dir", f"{PROC}/d", "--from-file", f"amc={data}"], f"--out-dir='{PROC}/d'"),
        ("launch", ["sweep", "--slurm", "--nodes", "1", "--gpus-per-node", "8", "--dry-run", "--out-dir", f"{PROC}/sw", "--",
                    "actor_rollout_ref.actor.policy_loss.alpha=0.1,0.2"], f"--out-dir='{PROC}/sw': cannot be created"),
        ("launch", ["slurm", "--nodes", "1", "--gpus-per-node", "8", "--dry-run", "--script", f"{PROC}/x.sbatch", "--",
                    "actor_rollout_ref.actor.policy_loss.alpha=0.1"], f"--script='{PROC}/x.sbatch': cannot be created"),
    ]


OUTPUT_IDS = ["train-proc", "train-file", "eval-sample-proc", "eval-sample-file", "eval-score", "eval-report", "analyze",
              "decode-generate", "decode-sweep", "study", "prepare-data", "launch-sweep", "launch-slurm"]


@pytest.mark.parametrize("case", range(len(OUTPUT_IDS)), ids=OUTPUT_IDS)
def test_an_unwritable_output_location_is_refused_naming_the_option(run, tmp_path, capsys, case):
    tool, argv, expected = _outputs(tmp_path, run)[case]
    prog = f"reweight-{tool}" + (f" {argv[0]}" if tool in ("eval", "launch") else "")
    assert _call(tool, argv) == 2
    line = _one_line(capsys, prog)
    assert expected in line, line


def test_the_output_probe_leaves_nothing_behind(tmp_path):
    from reweight.file_checks import output_dir_problem, output_file_problem

    before = sorted(tmp_path.rglob("*"))
    assert output_dir_problem(tmp_path / "a" / "b") is None
    assert output_file_problem(tmp_path / "c" / "out.jsonl") is None
    assert output_dir_problem(tmp_path) is None
    assert sorted(tmp_path.rglob("*")) == before
    assert output_dir_problem(f"{PROC}/x").startswith("cannot be created: /proc does not take new directories")


def test_the_real_console_script_prints_one_line_for_a_broken_file(tmp_path):
    """End to end, as a user runs it: one line on stderr, exit 2, no Ray session directory created."""
    overrides = minimal_run_files(tmp_path)
    (tmp_path / "train.parquet").write_text("not parquet")
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path / "ray")}
    r = subprocess.run([sys.executable, "-m", "reweight.train", *overrides], capture_output=True, text=True,
                       timeout=300, env=env, stdin=subprocess.DEVNULL)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines == [f"reweight-train: error: data.train_files='{tmp_path / 'train.parquet'}': not a parquet file "
                     f"(Parquet magic bytes not found in footer. Either the file is corrupted or this is not a parquet file.)"], r.stderr
    assert not (tmp_path / "ray").exists()


# ------------------------------------------------------------------------------------------ Ray start-up


def test_our_match_is_the_message_ray_raises_when_its_node_times_out():
    """The text we retry on is in Ray's own code for that failure (a Ray upgrade that rewords it fails here)."""
    from ray._private.node import Node

    from reweight.train import RAY_START_TIMEOUT

    source = inspect.getsource(Node.__init__)
    assert "raylet_start_wait_time_s = 30" in source
    assert f"The current node {RAY_START_TIMEOUT}" in source.replace('"\n', "").replace("                        \"", "")


RAY_TIMEOUT = Exception("The current node timed out during startup. This could happen because some of the raylet "
                        "failed to startup or the GCS has become overloaded.")


def test_a_node_that_times_out_twice_is_one_line_and_exit_75(run, monkeypatch, capsys):
    import ray

    calls = []

    def init(**kwargs):
        calls.append(kwargs)
        raise RAY_TIMEOUT

    monkeypatch.setattr(ray, "init", init)
    assert _call("train", [*run, "trainer.total_training_steps=1"]) == 75
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("reweight-train: error: Ray could not start its node on this machine: "
                                                   "in 2 tries the node did not register within Ray's fixed 30 s"), captured.err
    assert "Nothing was trained" in lines[0]
    assert len(calls) == 2 and calls[0] == calls[1]  # verl's own arguments, both times
    assert "[reweight-train] Ray's node did not register within Ray's 30 s" in captured.out
    assert "retrying once" in captured.out


def test_a_node_that_times_out_once_is_started_again(run, monkeypatch, capsys):
    import ray

    class Started(Exception):
        pass

    calls = []

    def init(**kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            raise RAY_TIMEOUT
        raise Started  # the second start got through: stop here, no Ray needed

    monkeypatch.setattr(ray, "init", init)
    assert _call("train", [*run, "trainer.total_training_steps=1"]) == 1  # Hydra reports our Started, exit 1
    captured = capsys.readouterr()
    assert len(calls) == 2 and calls[0] == calls[1]
    assert "Started" in captured.err and "Ray could not start" not in captured.err
    assert "retrying once" in captured.out


def test_other_ray_failures_are_not_retried(run, monkeypatch, capsys):
    import ray

    calls = []

    def init(**kwargs):
        calls.append(kwargs)
        raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379")

    monkeypatch.setattr(ray, "init", init)
    assert _call("train", [*run, "trainer.total_training_steps=1"]) == 1  # not retried, not called a busy machine
    assert len(calls) == 1
    assert "Failed to connect to Ray cluster" in capsys.readouterr().err


def test_the_timed_out_nodes_processes_are_stopped_before_the_retry():
    from ray._private.node import Node

    from reweight.train import _stop_partial_node

    node = Node.__new__(Node)  # no processes: only what _stop_partial_node calls on it
    stopped = []
    node.kill_all_processes = lambda **kwargs: stopped.append(kwargs)

    def start(self):
        raise RAY_TIMEOUT

    try:
        start(node)
    except Exception as e:
        _stop_partial_node(e)
    assert stopped == [{"check_alive": False, "allow_graceful": True}]


# ------------------------------------------------------------------------------------------ the other tools' models


def test_a_model_with_a_cut_weights_file_is_one_line_for_every_tool_that_loads_it(tiny_pair_dirs, tmp_path):
    """reweight-eval / -decode / -analyze load models through reweight.models.load_model: a cut
    model.safetensors was safetensors' traceback (exit 1); now one line naming the file, exit 2."""
    import shutil

    from reweight.cli_errors import run_cli
    from reweight.models import load_model

    model = tmp_path / "cut"
    shutil.copytree(tiny_pair_dirs[0], model)
    weights = model / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size // 2])
    with pytest.raises(ValueError) as error:
        load_model(str(model), "cpu")
    assert str(error.value).startswith(f"cannot load a model from '{model}': model.safetensors is truncated ({size // 2} bytes; "), error.value
    assert run_cli("reweight-eval sample", lambda: load_model(str(model), "cpu")) == 2


def test_a_verl_checkpoint_with_an_emptied_model_shard_is_refused_before_the_export(run, tmp_path, capsys):
    """reweight-eval sample --model <global_step_N>: the model merger failed with a traceback (exit 1)."""
    root = _checkpoint(tmp_path / "ckpt")
    (root / "global_step_2/actor/model_world_size_2_rank_0.pt").write_bytes(b"")
    line = _refused("eval", ["sample", "--model", str(root / "global_step_2"), "--data", str(tmp_path / "val.parquet"),
                             "--out", str(tmp_path / "e.jsonl")], capsys)
    assert line == (f"reweight-eval sample: error: cannot export the verl checkpoint '{root / 'global_step_2'}': "
                    f"actor/model_world_size_2_rank_0.pt is empty"), line
    assert not (root / "global_step_2/actor/hf_export").exists()


@pytest.mark.parametrize("kind, why", [("text", "not a parquet file"), ("zero_rows", "a parquet file with no rows"),
                                       ("columns", "no column 'prompt', which reweight-eval reads")])
def test_a_study_refuses_test_data_it_could_only_read_after_training(run, tmp_path, capsys, kind, why):
    """--test-data is read by the evaluation after every run has trained: a broken file is refused first."""
    path = _broken_data(tmp_path, kind)
    line = _refused("study", ["--dry-run", "--out", str(tmp_path / "study"), "--test-data", str(path), *run], capsys)
    assert f"--test-data '{path}': {why}" in line, line


def test_ray_head_finds_ray_beside_the_interpreter_when_path_lacks_it(monkeypatch, capsys):
    """The two-node fixture failed with "[Errno 2] No such file or directory: b'/bin/ray'" in a shell whose PATH
    lacked the environment's bin/: `ray` is taken from beside the interpreter, or refused in one line."""
    import reweight.launch.cli as cli

    started = []
    monkeypatch.setattr(os, "execve", lambda exe, cmd, env: started.append(exe))
    monkeypatch.setenv("PATH", "/nonexistent")
    assert cli.main(["ray-head", "--port", "6390"]) == 1  # what follows a real exec is never reached
    assert started == [str(Path(sys.executable).parent / "ray")]
    monkeypatch.setattr(cli.sys, "executable", "/nonexistent/python")
    assert cli.main(["ray-head", "--port", "6390"]) == 2
    line = _one_line(capsys, "reweight-launch ray-head")
    assert "the 'ray' command is neither on PATH nor beside /nonexistent/python" in line, line
