"""``reweight-launch slurm``: the sbatch script for 2 and 3 nodes, checked by ``bash -n`` and by running it.

There is no SLURM here, so the script is run with stand-ins for the commands it calls (``scontrol``,
``srun``, ``ray``, ``reweight-launch``) that record their arguments: that shows which node gets the head,
which nodes join it and with which address, and what the training job is submitted with.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reweight.launch.slurm import SlurmSpec, launch_slurm

OVERRIDES = ["actor_rollout_ref.model.path=/models/qwen", "actor_rollout_ref.actor.policy_loss.alpha=0.1"]
OFFLINE = {"WANDB_MODE": "offline"}

SRUN = """#!/bin/bash
# record, then run the step's command (after srun's own options) like srun would, on "node" -w
printf '%s\\n' "srun $*" >> "$CALL_LOG"
node=""
while [[ $# -gt 0 && "$1" == -* ]]; do
  if [[ "$1" == "-w" ]]; then node="$2"; shift 2; else shift; fi
done
if [[ "$1" == hostname ]]; then echo "10.0.0.$(( ${node#node} + 1 )) fe80::1"; exit 0; fi
SLURM_STEP_NODE="$node" "$@"
"""
RAY = """#!/bin/bash
printf '%s\\n' "ray@$SLURM_STEP_NODE $*" >> "$CALL_LOG"
"""
# like the real `wait-nodes`, block until --nodes N nodes have started (here: N `ray start` calls logged)
LAUNCHER = """#!/bin/bash
printf '%s\\n' "reweight-launch $*" >> "$CALL_LOG"
if [[ "$1" == wait-nodes ]]; then
  want=0
  while [[ $# -gt 0 ]]; do if [[ "$1" == --nodes ]]; then want="$2"; fi; shift; done
  for _ in $(seq 600); do
    (( $(grep -c '^ray@' "$CALL_LOG") >= want )) && exit 0
    sleep 0.1
  done
  echo "stand-in wait-nodes: timed out waiting for $want nodes" >&2
  exit 1
fi
"""


def _shims(bin_dir: Path, hostnames: list[str]) -> None:
    bin_dir.mkdir()
    scontrol = "#!/bin/bash\n[[ \"$1 $2\" == 'show hostnames' ]] || exit 3\n" + "".join(f"echo {h}\n" for h in hostnames)
    for name, text in {"scontrol": scontrol, "srun": SRUN, "ray": RAY, "reweight-launch": LAUNCHER}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)


def run_script(script: Path, tmp_path: Path, hostnames: list[str]) -> tuple[subprocess.CompletedProcess, list[str]]:
    bin_dir = tmp_path / "bin"
    _shims(bin_dir, hostnames)
    log = tmp_path / "calls.log"
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "CALL_LOG": str(log),
        "SLURM_JOB_NODELIST": "node[0-9]",
        "HOME": str(tmp_path),
    }
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    return result, log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize("nodes", [2, 3])
def test_slurm_dry_run_brings_up_one_head_and_n_minus_1_workers(nodes, tmp_path, monkeypatch, capsys):
    for k in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", "secret-key-never-in-files")
    spec = SlurmSpec(nodes=nodes, gpus_per_node=8, cpus_per_node=48, job_name="rw")
    script_path = tmp_path / "job.sbatch"
    launch = launch_slurm(spec, OVERRIDES, config_name="dapo_reweight", script_path=script_path, dry_run=True)
    assert launch.job_id is None and launch.command == ["sbatch", "--parsable", str(script_path)]
    text = script_path.read_text()
    assert text == launch.script and os.access(script_path, os.X_OK)
    assert "secret-key-never-in-files" not in text and "WANDB_API_KEY" not in text
    assert f"#SBATCH --nodes={nodes}" in text and "#SBATCH --gpus-per-node=8" in text and "#SBATCH --cpus-per-task=48" in text
    assert subprocess.run(["bash", "-n", str(script_path)], capture_output=True).returncode == 0
    if shutil.which("shellcheck"):
        assert subprocess.run(["shellcheck", "-S", "error", str(script_path)]).returncode == 0

    hostnames = [f"node{i}" for i in range(nodes)]
    result, calls = run_script(script_path, tmp_path, hostnames)
    assert result.returncode == 0, result.stderr

    ray_calls = [c for c in calls if c.startswith("ray@")]
    heads = [c for c in ray_calls if " --head" in c]
    workers = [c for c in ray_calls if " --head" not in c]
    assert len(heads) == 1 and heads[0].startswith("ray@node0 start --head")
    assert "--node-ip-address=10.0.0.1" in heads[0] and "--num-cpus=48" in heads[0] and "--num-gpus=8" in heads[0]
    assert "--block" in heads[0] and "--port=6379" in heads[0]
    # one worker per remaining node, each on its own node, each joining node0's address
    assert sorted(c.split()[0] for c in workers) == [f"ray@node{i}" for i in range(1, nodes)]
    for c in workers:
        assert c.split()[1:3] == ["start", "--address=10.0.0.1:6379"] and "--num-cpus=48" in c and "--block" in c
    # srun pins every step to one node with -w
    step_lines = [c for c in calls if c.startswith("srun ") and " ray " in c]
    assert len(step_lines) == nodes and all("--nodes=1 --ntasks=1 -w node" in c for c in step_lines)

    launcher = [shlex.split(c)[1:] for c in calls if c.startswith("reweight-launch ")]
    waits = [c for c in launcher if c[0] == "wait-nodes"]
    assert waits[0][waits[0].index("--nodes") + 1] == "1"
    assert waits[-1][waits[-1].index("--nodes") + 1] == str(nodes)
    submit = [c for c in launcher if c[0] == "submit"]
    assert len(submit) == 1
    args = submit[0]
    assert args[args.index("--address") + 1] == "http://10.0.0.1:8265" and "--wait" in args
    overrides = args[args.index("--") + 1 :]
    assert overrides[:3] == [f"trainer.nnodes={nodes}", "trainer.n_gpus_per_node=8", "actor_rollout_ref.rollout.name=vllm"]
    assert overrides[3:] == OVERRIDES
    assert args[args.index("--config-name") + 1] == "dapo_reweight"
    # the foreground order: wait for the head, wait for all nodes, submit; and in the script the head is
    # started before the first wait, the workers between the waits (the ray steps run in the background)
    assert [c[0] for c in launcher] == ["wait-nodes", "wait-nodes", "submit"]
    lines = [line.strip() for line in text.splitlines()]
    starts = ("srun --nodes=1 --ntasks=1 -w \"$HEAD_NODE\" ray start --head", "reweight-launch wait-nodes",
              "srun --nodes=1 --ntasks=1 -w \"$node\" ray start --address", "reweight-launch submit")
    at = {key: next(i for i, line in enumerate(lines) if line.startswith(key)) for key in starts}
    last_wait = max(i for i, line in enumerate(lines) if line.startswith("reweight-launch wait-nodes"))
    head_at, wait_at, worker_at, submit_at = (at[k] for k in starts)
    assert head_at < wait_at < worker_at < last_wait < submit_at

def test_slurm_script_refuses_an_allocation_of_the_wrong_size(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    script_path = tmp_path / "job.sbatch"
    launch_slurm(SlurmSpec(nodes=3, gpus_per_node=8), OVERRIDES, config_name="dapo_reweight", script_path=script_path, dry_run=True)
    result, calls = run_script(script_path, tmp_path, ["node0", "node1"])
    assert result.returncode == 1
    assert "expected 3 nodes, SLURM gave 2: node0 node1" in result.stderr
    assert not any(c.startswith(("ray@", "srun")) for c in calls)


def test_slurm_cli_dry_run_and_bad_input(tmp_path, monkeypatch, capsys):
    """The command: a dry run prints the script and the sbatch command; a contradiction or missing W&B
    credentials fail with a clear message before any script is written."""
    from reweight.launch.cli import main

    for k in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "offline")
    script = tmp_path / "s.sbatch"
    cmd = ["slurm", "--nodes", "2", "--gpus-per-node", "4", "--dry-run", "--script", str(script), "--config-name", "dapo_reweight"]
    assert main([*cmd, "--", *OVERRIDES]) == 0
    out = capsys.readouterr().out
    assert out.startswith("#!/bin/bash") and f"sbatch --parsable {script}" in out and script.exists()
    assert "trainer.nnodes=2 trainer.n_gpus_per_node=4 actor_rollout_ref.rollout.name=vllm" in out
    script.unlink()
    assert main([*cmd, "--", "trainer.nnodes=3", *OVERRIDES]) == 2
    assert "trainer.nnodes=3 contradicts --nodes 2" in capsys.readouterr().err and not script.exists()
    monkeypatch.delenv("WANDB_MODE")
    assert main([*cmd, "--", *OVERRIDES]) == 2
    err = capsys.readouterr().err
    assert "trainer.logger" in err and "WANDB_API_KEY" in err and "WANDB_MODE=offline" in err
    assert not script.exists()


EXAMPLE = Path(__file__).resolve().parent.parent / "launch" / "slurm_example.sbatch"


def render_example() -> str:
    """What launch/slurm_example.sbatch must contain: the paper's 4 x 8 GPU Qwen2.5-Math-7B setup."""
    from reweight.launch.slurm import render_sbatch, slurm_training_overrides

    spec = SlurmSpec(nodes=4, gpus_per_node=8, cpus_per_node=64, job_name="qwen25-math-7b-reweight", time_limit="72:00:00",
                     setup=["source ~/venvs/verl-reweight/bin/activate"])
    return render_sbatch(spec, slurm_training_overrides(4, 8, []), config_name="qwen25_math_7b_reweight")


def test_checked_in_slurm_example_is_what_the_launcher_writes():
    """launch/slurm_example.sbatch is documentation; it must not drift from the generator. Regenerate it with
    WANDB_MODE=offline reweight-launch slurm --nodes 4 --gpus-per-node 8 --cpus-per-node 64 \\
        --job-name qwen25-math-7b-reweight --time 72:00:00 --setup 'source ~/venvs/verl-reweight/bin/activate' \\
        --config-name qwen25_math_7b_reweight --dry-run --script launch/slurm_example.sbatch"""
    assert EXAMPLE.read_text() == render_example()
    assert subprocess.run(["bash", "-n", str(EXAMPLE)]).returncode == 0
