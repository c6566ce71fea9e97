"""A SLURM batch job that brings up a Ray cluster on its nodes and runs one ``reweight-train`` job on it.

The generated script (bash, ``set -euo pipefail``):

1. reads the allocation's hosts into a bash array, one element per node
   (``mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")``) and checks the count;
2. starts the Ray head on ``NODES[0]`` (``srun --nodes=1 --ntasks=1 -w "$node"``, ``ray start --head
   --block`` in the background) with a fixed ``--num-cpus`` (Ray would otherwise count every core of the
   machine, not the allocation) and waits until its dashboard answers;
3. starts a worker on each of ``NODES[1..N-1]`` the same way, joining the head's GCS address;
4. waits until N nodes with G GPUs each are alive (``reweight-launch wait-nodes``);
5. submits the training run to that cluster and waits for it (``reweight-launch submit --wait``) with
   ``trainer.nnodes=N trainer.n_gpus_per_node=G`` and ``actor_rollout_ref.rollout.name`` set (verl 0.9.x
   has no default for it);
6. on exit, stops the Ray job steps.

W&B credentials are never written into the script: ``sbatch`` exports the submitting environment to the
job (its default ``--export=ALL``), and the in-job ``submit`` forwards them to the Ray job.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reweight.io import write_text_atomic
from reweight.launch.cluster import AUTH_MODES, DEFAULT_DASHBOARD_PORT, DEFAULT_GCS_PORT, head_start_command, worker_start_command
from reweight.launch.overrides import explicit_value

ROLLOUT_KEY = "actor_rollout_ref.rollout.name"
NNODES_KEY = "trainer.nnodes"
GPUS_KEY = "trainer.n_gpus_per_node"
DEFAULT_ROLLOUT = "vllm"


class SlurmError(ValueError):
    """A SLURM launch that cannot work as asked."""


@dataclass
class SlurmSpec:
    """The allocation and the Ray layout of one SLURM job."""

    nodes: int
    gpus_per_node: int
    cpus_per_node: int = 32
    job_name: str = "reweight"
    partition: str | None = None
    account: str | None = None
    time_limit: str | None = None
    output: str = "slurm-%x-%j.out"
    ray_port: int = DEFAULT_GCS_PORT
    dashboard_port: int = DEFAULT_DASHBOARD_PORT
    node_wait_s: int = 900
    ray_auth: str = "token"
    setup: list[str] = field(default_factory=list)
    extra_sbatch: list[str] = field(default_factory=list)

    def check(self) -> None:
        if self.nodes < 1:
            raise SlurmError(f"--nodes must be at least 1, got {self.nodes}")
        if self.gpus_per_node < 1:
            raise SlurmError(f"--gpus-per-node must be at least 1, got {self.gpus_per_node}")
        if self.cpus_per_node < 1:
            raise SlurmError(f"--cpus-per-node must be at least 1, got {self.cpus_per_node}")
        if self.ray_auth not in AUTH_MODES:
            raise SlurmError(f"--ray-auth must be one of {AUTH_MODES}, got {self.ray_auth!r}")
        if not self.job_name or any(c.isspace() for c in self.job_name):
            raise SlurmError(f"job name {self.job_name!r} must be one word")


def slurm_training_overrides(
    nodes: int, gpus_per_node: int, overrides: Sequence[str], rollout_name: str | None = None
) -> list[str]:
    """The user's overrides plus ``trainer.nnodes=N trainer.n_gpus_per_node=G`` and the rollout name.

    An override that already sets nnodes / n_gpus_per_node to something else contradicts the allocation:
    refused. A rollout name given in the overrides wins over ``rollout_name``.
    """
    overrides = list(overrides)
    for key, want in ((NNODES_KEY, nodes), (GPUS_KEY, gpus_per_node)):
        given = explicit_value(overrides, key)
        if given is not None and given.strip() != str(want):
            flag = "--nodes" if key == NNODES_KEY else "--gpus-per-node"
            raise SlurmError(f"the override {key}={given} contradicts {flag} {want}; drop it (the launcher sets {key}={want})")
    overrides = [o for o in overrides if o.lstrip("+").split("=", 1)[0] not in (NNODES_KEY, GPUS_KEY)]
    given_rollout = explicit_value(overrides, ROLLOUT_KEY)
    if given_rollout is not None and rollout_name is not None and given_rollout != rollout_name:
        raise SlurmError(f"the override {ROLLOUT_KEY}={given_rollout} contradicts --rollout-name {rollout_name}")
    result = [f"{NNODES_KEY}={nodes}", f"{GPUS_KEY}={gpus_per_node}"]
    if given_rollout is None:
        result.append(f"{ROLLOUT_KEY}={rollout_name or DEFAULT_ROLLOUT}")
    return result + overrides


def _bash_command(args: Sequence[str], **shell_values: str) -> str:
    """``shlex.join`` of ``args`` where an ``--flag=@NAME@`` placeholder becomes ``--flag="$NAME"``."""
    parts = []
    for arg in args:
        for name, expr in shell_values.items():
            marker = f"@{name}@"
            if marker in arg:
                prefix = arg.split(marker)[0]
                parts.append(shlex.quote(prefix) + f'"{expr}"' if prefix else f'"{expr}"')
                break
        else:
            parts.append(shlex.quote(arg))
    return " ".join(parts)


def render_sbatch(
    spec: SlurmSpec,
    training_overrides: Sequence[str],
    *,
    config_name: str | None = None,
    group: str | None = None,
    tags: Sequence[str] = (),
    wandb_dir: str | None = None,
    ship_package: bool = False,
) -> str:
    """The sbatch script for ``spec`` running ``reweight-train <training_overrides>``."""
    spec.check()
    sbatch = [
        f"--job-name={spec.job_name}",
        f"--nodes={spec.nodes}",
        "--ntasks-per-node=1",
        f"--gpus-per-node={spec.gpus_per_node}",
        f"--cpus-per-task={spec.cpus_per_node}",
        f"--output={spec.output}",
    ]
    if spec.partition:
        sbatch.append(f"--partition={spec.partition}")
    if spec.account:
        sbatch.append(f"--account={spec.account}")
    if spec.time_limit:
        sbatch.append(f"--time={spec.time_limit}")
    sbatch += list(spec.extra_sbatch)
    for opt in sbatch:
        if "\n" in opt or not opt.startswith("--"):
            raise SlurmError(f"sbatch option {opt!r} must be one '--option[=value]'")

    head = head_start_command(
        port=spec.ray_port,
        num_cpus=spec.cpus_per_node,
        num_gpus=spec.gpus_per_node,
        dashboard_host="0.0.0.0",
        dashboard_port=spec.dashboard_port,
        node_ip="@HEAD_IP@",
        block=True,
    )
    worker = worker_start_command(
        "@RAY_GCS_ADDRESS@", num_cpus=spec.cpus_per_node, num_gpus=spec.gpus_per_node, block=True
    )
    head_cmd = _bash_command(head, HEAD_IP="$HEAD_IP")
    worker_cmd = _bash_command(worker, RAY_GCS_ADDRESS="$RAY_GCS_ADDRESS")

    submit = ["reweight-launch", "submit", "--address", "@DASHBOARD_URL@", "--wait"]
    if config_name:
        submit += ["--config-name", config_name]
    if group:
        submit += ["--group", group]
    for tag in tags:
        submit += ["--tag", tag]
    if wandb_dir:
        submit += ["--wandb-dir", wandb_dir]
    if ship_package:
        submit += ["--ship-package"]
    submit_cmd = _bash_command([*submit, "--", *training_overrides], DASHBOARD_URL="$DASHBOARD_URL")
    setup = "\n".join(spec.setup) if spec.setup else "# (no --setup lines: the submitting shell's environment is used)"

    return f"""#!/bin/bash
{chr(10).join('#SBATCH ' + o for o in sbatch)}
#
# Written by `reweight-launch slurm`: a Ray cluster over this job's {spec.nodes} node(s), then one
# reweight-train run on it with trainer.nnodes={spec.nodes} trainer.n_gpus_per_node={spec.gpus_per_node}.
# W&B credentials are not in this file: sbatch exports the submitting environment.
set -euo pipefail

NNODES={spec.nodes}
RAY_PORT={spec.ray_port}
DASHBOARD_PORT={spec.dashboard_port}
NODE_WAIT_S={spec.node_wait_s}
export RAY_AUTH_MODE="${{RAY_AUTH_MODE:-{spec.ray_auth}}}"
export RAY_USAGE_STATS_ENABLED=0

{setup}

for cmd in scontrol srun ray reweight-launch; do
  command -v "$cmd" >/dev/null || {{ echo "reweight-launch slurm: '$cmd' is not on PATH on $(hostname)" >&2; exit 1; }}
done

# One array element per node (not one quoted string), so NODES[i] is node i.
mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
if (( ${{#NODES[@]}} != NNODES )); then
  echo "reweight-launch slurm: expected $NNODES nodes, SLURM gave ${{#NODES[@]}}: ${{NODES[*]}}" >&2
  exit 1
fi
HEAD_NODE="${{NODES[0]}}"
HEAD_IP="$(srun --nodes=1 --ntasks=1 -w "$HEAD_NODE" hostname --ip-address | awk '{{print $1}}')"
RAY_GCS_ADDRESS="$HEAD_IP:$RAY_PORT"
DASHBOARD_URL="http://$HEAD_IP:$DASHBOARD_PORT"
echo "reweight-launch slurm: head $HEAD_NODE ($RAY_GCS_ADDRESS), workers: ${{NODES[*]:1}}"

RAY_STEP_PIDS=()
stop_ray() {{
  if (( ${{#RAY_STEP_PIDS[@]}} > 0 )); then
    kill "${{RAY_STEP_PIDS[@]}}" 2>/dev/null || true
    wait "${{RAY_STEP_PIDS[@]}}" 2>/dev/null || true
  fi
}}
trap stop_ray EXIT

# Head: node 0.
srun --nodes=1 --ntasks=1 -w "$HEAD_NODE" {head_cmd} &
RAY_STEP_PIDS+=("$!")
reweight-launch wait-nodes --address "$DASHBOARD_URL" --nodes 1 --timeout "$NODE_WAIT_S"

# Workers: nodes 1 .. NNODES-1, each joining the head.
for ((i = 1; i < NNODES; i++)); do
  node="${{NODES[$i]}}"
  srun --nodes=1 --ntasks=1 -w "$node" {worker_cmd} &
  RAY_STEP_PIDS+=("$!")
done
reweight-launch wait-nodes --address "$DASHBOARD_URL" --nodes "$NNODES" --gpus-per-node {spec.gpus_per_node} --timeout "$NODE_WAIT_S"

# The training run, as a Ray job on this cluster.
{submit_cmd}
"""


def write_sbatch(text: str, path: str | Path) -> Path:
    """Write the script atomically, executable."""
    return write_text_atomic(path, text, mode=0o755)


def default_script_path(script_dir: str | Path, job_name: str) -> Path:
    return Path(script_dir).expanduser().resolve() / f"{job_name}-{time.strftime('%Y%m%d-%H%M%S')}.sbatch"


def sbatch_command(script: str | Path) -> list[str]:
    return ["sbatch", "--parsable", str(script)]


def submit_sbatch(script: str | Path) -> str:
    """``sbatch --parsable <script>``; returns the SLURM job id."""
    if shutil.which("sbatch") is None:
        raise SlurmError("sbatch is not on PATH: run this on a SLURM login node, or use --dry-run to only write the script")
    result = subprocess.run(sbatch_command(script), capture_output=True, text=True)
    if result.returncode != 0:
        raise SlurmError(f"sbatch {script} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout.strip().split(";")[0]


@dataclass
class SlurmLaunch:
    """A written sbatch script, the command that submits it, and (unless a dry run) the SLURM job id."""

    script_path: Path
    script: str
    command: list[str]
    training_overrides: list[str]
    job_id: str | None = None


def launch_slurm(
    spec: SlurmSpec,
    overrides: Sequence[str],
    *,
    config_name: str | None = None,
    rollout_name: str | None = None,
    script_path: str | Path | None = None,
    script_dir: str | Path = "outputs/launch/slurm",
    environ: dict[str, str] | None = None,
    group: str | None = None,
    tags: Sequence[str] = (),
    wandb_dir: str | None = None,
    ship_package: bool = False,
    dry_run: bool = False,
    check_paths: bool = False,
) -> SlurmLaunch:
    """Check the run (config composes, W&B credentials), write its sbatch script, submit unless ``dry_run``.

    The config is composed and validated here (as ``reweight-train --dry-run``; the files too with
    ``check_paths``), on the login node, so a bad key or value fails now rather than after the job
    waited in the queue, and no script is written; the in-job ``submit`` checks the cluster's shape once it is up.
    """
    from reweight.launch.submit import plan_job

    spec.check()
    training_overrides = slurm_training_overrides(spec.nodes, spec.gpus_per_node, overrides, rollout_name)
    plan_job(training_overrides, config_name=config_name, environ=environ, group=group, tags=tags, check_paths=check_paths)
    text = render_sbatch(
        spec, training_overrides, config_name=config_name, group=group, tags=tags, wandb_dir=wandb_dir, ship_package=ship_package
    )
    path = write_sbatch(text, script_path or default_script_path(script_dir, spec.job_name))
    launch = SlurmLaunch(script_path=path, script=text, command=sbatch_command(path), training_overrides=training_overrides)
    if not dry_run:
        launch.job_id = submit_sbatch(path)
    return launch
