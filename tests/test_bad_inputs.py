"""Bad input to every console script: one line ``reweight-<tool>...: error: <key/file and value>`` on
stderr, exit status 2, no traceback, nothing expensive started (no Ray, no model load, no hub, nothing
written); the full traceback only with ``REWEIGHT_DEBUG=1``.

The table runs each CLI's ``main`` in-process (fast); a few cases run the real console scripts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import expensive_work_fails

ALPHA = "actor_rollout_ref.actor.policy_loss.alpha"
SCHEME = "actor_rollout_ref.actor.policy_loss.scheme"


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A working directory with files the cases point at, and tripwires on everything expensive."""
    expensive_work_fails(monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REWEIGHT_DEBUG", raising=False)
    (tmp_path / "not_a_dir").write_text("x")
    (tmp_path / "global_step_3").mkdir()  # a directory named like a checkpoint, without actor/
    (tmp_path / "ckpt_dir").mkdir()
    (tmp_path / "data.parquet").write_text("x")
    (tmp_path / "responses.jsonl").write_text('{"prompt": "1+1", "response": "2", "source": "base"}\n')
    return tmp_path


def _main(tool: str):
    from importlib import import_module

    module = {
        "train": "reweight.train",
        "prepare-data": "reweight.data.prepare",
        "analyze": "reweight.analysis.cli",
        "decode": "reweight.decoding.cli",
        "eval": "reweight.evaluation.cli",
        "launch": "reweight.launch.cli",
    }[tool]
    return import_module(module).main


def _call(tool: str, argv: list[str]) -> int:
    try:
        return int(_main(tool)(argv) or 0)
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 1


def _t(path: str) -> str:
    """A path under the test's working directory (the fixture chdirs there)."""
    return str(Path.cwd() / path)


# (tool, argv, text that must appear in the message) -- {tmp} is the test's directory
CASES = [
    # reweight-train: our checks, Hydra composition, files, resume, output dir; dry run and real run alike
    ("train", [f"{ALPHA}=-1"], f"{ALPHA} must be finite and >= 0, got -1.0"),
    ("train", ["--dry-run", f"{ALPHA}=nan"], f"{ALPHA} must be finite"),
    ("train", [f"{SCHEME}=bogus"], f"{SCHEME}='bogus'"),
    ("train", ["--dry-run", "actor_rollout_ref.actor.policy_loss.prob_source=ref"], "prob_source"),
    ("train", ["data.train_files=/nonexistent.parquet"], "data.train_files='/nonexistent.parquet': file not found"),
    ("train", ["--dry-run", "data.val_files=[{tmp}/data.parquet,/no/val.parquet]"], "data.val_files='/no/val.parquet'"),
    ("train", ["trainer.resume_mode=resume_path", "trainer.resume_from_path=/nonexistent/global_step_3"],
     "trainer.resume_from_path='/nonexistent/global_step_3': no such directory"),
    ("train", ["--dry-run", "trainer.resume_mode=resume_path", "trainer.resume_from_path={tmp}/global_step_3"],
     "no actor/ inside"),
    ("train", ["trainer.resume_mode=resume_path", "trainer.resume_from_path={tmp}/ckpt_dir"], "expected a directory named global_step_N"),
    ("train", ["trainer.resume_mode=resume_path"], "trainer.resume_from_path"),
    ("train", ["trainer.resume_mode=sometimes"], "trainer.resume_mode='sometimes'"),
    ("train", ["actor_rollout_ref.model.path=/nonexistent/model"], "actor_rollout_ref.model.path='/nonexistent/model'"),
    ("train", ["--dry-run", "actor_rollout_ref.model.path=just-a-name"], "actor_rollout_ref.model.path='just-a-name'"),
    ("train", ["trainer.default_local_dir={tmp}/not_a_dir/ckpt"], "trainer.default_local_dir="),
    ("train", ["trainer.no_such_key=1"], "trainer.no_such_key"),
    ("train", ["--config-name", "no_such_config"], "no_such_config"),
    ("train", ["--dry-run", "+reward_model.reward_manager=dapo"], "reward_model.reward_manager"),
    ("train", [f"{ALPHA}=notanumber"], "notanumber"),
    # reweight-prepare-data
    ("prepare-data", ["--out-dir", "{tmp}/out", "--from-file", "amc=/no/such/file.parquet"], "amc=/no/such/file.parquet"),
    ("prepare-data", ["--out-dir", "{tmp}/out", "--only", "gsm8k"], "unknown dataset 'gsm8k'"),
    ("prepare-data", ["--out-dir", "{tmp}/out", "--repeat", "amc=0"], "--repeat amc='0'"),
    ("prepare-data", ["--out-dir", "{tmp}/out", "--repeat", "amc=x"], "--repeat amc='x'"),
    # reweight-analyze: models refused without the hub
    ("analyze", ["--base", "/nonexistent/base", "--rl", "{tmp}/ckpt_dir", "--responses", "{tmp}/responses.jsonl", "--out", "{tmp}/a"],
     "--base='/nonexistent/base'"),
    ("analyze", ["--base", "{tmp}/ckpt_dir", "--rl", "./rl_here", "--responses", "{tmp}/responses.jsonl", "--out", "{tmp}/a"],
     "--rl='./rl_here'"),
    # reweight-decode
    ("decode", ["generate", "--base", "/nonexistent", "--rl", "{tmp}/ckpt_dir", "--prompt", "hi", "--out", "{tmp}/g.jsonl"], "--base='/nonexistent'"),
    ("decode", ["sweep", "--base", "{tmp}/ckpt_dir", "--rl", "ckpt_dir/missing", "--data", "{tmp}/data.parquet", "--out", "{tmp}/s"],
     "--rl='ckpt_dir/missing'"),
    # reweight-eval
    ("eval", ["sample", "--model", "/nonexistent", "--data", "{tmp}/data.parquet", "--out", "{tmp}/e.jsonl"], "--model='/nonexistent'"),
    ("eval", ["support", "--base", "{tmp}/ckpt_dir", "--rl", "/no/rl", "--base-results", "{tmp}/r.jsonl",
              "--rl-results", "{tmp}/r.jsonl", "--out", "{tmp}/s.json"], "--rl='/no/rl'"),
    ("eval", ["report", "--results", "{tmp}/r.jsonl", "--out-dir", "{tmp}/rep"], "LABEL=PATH"),
    # reweight-launch: every point validated before a script is written or a job submitted
    ("launch", ["slurm", "--nodes", "2", "--gpus-per-node", "8", "--dry-run", "--script", "{tmp}/x.sbatch", "--", f"{ALPHA}=-3"],
     f"{ALPHA} must be finite and >= 0, got -3.0"),
    ("launch", ["sweep", "--slurm", "--nodes", "1", "--gpus-per-node", "8", "--dry-run", "--out-dir", "{tmp}/sw", "--",
                f"{SCHEME}=low_prob,bogus"], f"{SCHEME}='bogus'"),
    ("launch", ["submit", "--dry-run", "--", "trainer.no_such_key=1"], "trainer.no_such_key"),
    # verl's own settings (reweight/preflight.py): every point of a sweep, the first one valid
    ("launch", ["sweep", "--slurm", "--nodes", "1", "--gpus-per-node", "2", "--dry-run", "--out-dir", "{tmp}/sw2", "--",
                "actor_rollout_ref.rollout.gpu_memory_utilization=0.5,1.5"],
     "actor_rollout_ref.rollout.gpu_memory_utilization=1.5: must be > 0 and <= 1"),
    ("launch", ["slurm", "--nodes", "1", "--gpus-per-node", "8", "--dry-run", "--check-paths", "--script", "{tmp}/y.sbatch",
                "--", "data.train_files=/nonexistent.parquet"], "data.train_files='/nonexistent.parquet'"),
]


def _ids():
    return [f"{tool}-{i}" for i, (tool, _, _) in enumerate(CASES)]


@pytest.mark.parametrize("tool, argv, message", CASES, ids=_ids())
def test_bad_input_is_one_line_exit_2_before_anything_starts(tool, argv, message, env, capsys):
    import ray

    argv = [a.replace("{tmp}", str(env)) for a in argv]
    before = sorted(p.name for p in env.rglob("*"))
    code = _call(tool, argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err  # one line (warnings are silenced by the CLIs or not emitted)
    prog = f"reweight-{tool}"
    assert lines[0].startswith(prog) and ": error: " in lines[0], lines[0]
    assert message.replace("{tmp}", str(env)) in lines[0], lines[0]
    assert not ray.is_initialized()
    if tool in ("launch", "prepare-data"):  # nothing written: no sbatch script, manifest or output file
        after = sorted(p.name for p in env.rglob("*") if not p.is_relative_to(env / "outputs"))
        assert after == before


def test_at_least_twenty_cases_over_every_cli():
    assert len(CASES) >= 20
    assert {tool for tool, _, _ in CASES} == {"train", "prepare-data", "analyze", "decode", "eval", "launch"}


def test_debug_variable_adds_the_traceback(env, capsys, monkeypatch):
    monkeypatch.setenv("REWEIGHT_DEBUG", "1")
    assert _call("train", ["data.train_files=/nonexistent.parquet"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "ConfigError" in err
    assert err.strip().splitlines()[-1] == "reweight-train: error: data.train_files='/nonexistent.parquet': file not found"


def test_hub_ids_and_existing_checkpoint_dirs_are_accepted_without_the_hub(env, capsys):
    from reweight.checks import MODEL_KEY, check_model_path
    from reweight.cli_errors import run_cli
    from reweight.models import model_path_problem

    assert model_path_problem("Qwen/Qwen2.5-Math-7B") is None  # a hub id: left to its loader
    assert model_path_problem(str(env / "ckpt_dir")) is None  # any existing directory (e.g. a verl checkpoint)
    assert model_path_problem("hdfs://cluster/models/x") is None
    assert model_path_problem("embedded://model") is None
    missing = "no such file or directory (and not a Hugging Face hub id of the form org/name)"
    # "ckpt_dir/missing": its first component is a local folder, so it is a missing local path
    for path in ("ckpt_dir/missing", "/abs/missing", "bare-name", "org/name/extra"):
        assert model_path_problem(path) == missing
        # and the refusal names the key and the value, exit 2 through reweight.cli_errors (the CLI's path:
        # CASES above run reweight-train with a missing model end to end)
        assert run_cli("reweight-train", lambda: check_model_path(path, MODEL_KEY)) == 2
        line = capsys.readouterr().err.strip()
        assert line == f"reweight-train: error: {MODEL_KEY}={path!r}: {missing}", line


# ------------------------------------------------------------------------------ the real console scripts


def _script(name: str) -> str:
    found = shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    # pyproject.toml's [project.scripts] installs it: a missing script is a broken install, not a skip
    assert found is not None, f"{name} is not installed as a console script (pyproject.toml [project.scripts])"
    return found


@pytest.mark.parametrize(
    "argv, message",
    [
        (["reweight-train", f"{ALPHA}=-1"], f"reweight-train: error: {ALPHA} must be finite and >= 0, got -1.0"),
        (["reweight-decode", "generate", "--base", "/nonexistent", "--rl", "/nonexistent", "--prompt", "hi", "--out", "o.jsonl"],
         "reweight-decode: error: --base='/nonexistent'"),
        (["reweight-launch", "slurm", "--nodes", "2", "--gpus-per-node", "8", "--dry-run", "--", f"{ALPHA}=-3"],
         f"reweight-launch slurm: error: {ALPHA} must be finite"),
    ],
    ids=["train", "decode", "launch"],
)
def test_console_scripts(argv, message, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("REWEIGHT_DEBUG", None)
    out = subprocess.run([_script(argv[0]), *argv[1:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and message in out.stderr, out.stderr[-2000:]
    assert "ray init kwargs" not in out.stdout  # verl's run_ppo never started
    assert not list(tmp_path.rglob("*.sbatch"))
