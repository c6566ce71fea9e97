"""``reweight-launch``: multi-node launch of ``reweight-train`` (Ray, SLURM, sweeps, W&B summaries).

    reweight-launch ray-head --num-cpus 32 --num-gpus 8                  # on the head node
    reweight-launch ray-worker --address 10.0.0.1:6379 --num-cpus 32 --num-gpus 8   # on every other node
    reweight-launch submit --address http://10.0.0.1:8265 --wait -- trainer.nnodes=2 trainer.n_gpus_per_node=8
    reweight-launch slurm --nodes 4 --gpus-per-node 8 --dry-run -- --config-name ... (overrides)
    reweight-launch sweep --name alpha-scan --wait -- actor_rollout_ref.actor.policy_loss.alpha=0.1,0.2 seed=1,2,3
    reweight-launch summary outputs/sweeps/alpha-scan/manifest.json --format markdown
    reweight-launch doctor --address auto --config-name qwen25_math_7b_reweight   # before the first job

Training overrides go after ``--`` and use Hydra's syntax, exactly as for ``reweight-train``. Every
subcommand is a thin shell over :mod:`reweight.launch`; bad input is reported before anything starts.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence

PROG = "reweight-launch"
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
LOG_TAIL_LINES = 40


def default_address() -> str:
    """The dashboard address: RAY_API_SERVER_ADDRESS, or an http RAY_ADDRESS, or the local default."""
    for var in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        value = os.environ.get(var, "")
        if value.startswith(("http://", "https://")):
            return value
    return DEFAULT_ADDRESS


def _say(text: str) -> None:
    print(f"[{PROG}] {text}", flush=True)


# ------------------------------------------------------------------------------------------------ ray


def _add_ray_node_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-cpus", type=int, help="CPUs Ray may use on this node (fix it under SLURM)")
    p.add_argument("--num-gpus", type=int, help="GPUs Ray may use on this node (default: detected)")
    p.add_argument("--node-ip", help="this node's IP as the other nodes reach it")
    p.add_argument("--temp-dir", help="Ray's temporary/session directory")
    p.add_argument("--dashboard-agent-listen-port", type=int, help="needed when two nodes share a machine")
    p.add_argument("--metrics-export-port", type=int)
    p.add_argument("--auth", choices=("token", "disabled"), default="token", help="Ray token authentication (same on every node)")
    p.add_argument("--block", action="store_true", help="stay in the foreground until signalled (SLURM, containers)")
    p.add_argument("--dry-run", action="store_true", help="print the ray start command only")
    p.add_argument("extra", nargs="*", help="after --: more `ray start` arguments")


def _exec_ray(cmd: list[str], env: dict[str, str], dry_run: bool) -> int:
    _say("RAY_AUTH_MODE=" + env["RAY_AUTH_MODE"] + " " + shlex.join(cmd))
    if dry_run:
        return 0
    import shutil

    # `ray` is installed beside this interpreter; a shell that did not activate the environment lacks it on PATH
    exe = shutil.which(cmd[0], path=env.get("PATH")) or shutil.which(cmd[0], path=os.path.dirname(sys.executable))
    if exe is None:
        raise FileNotFoundError(f"the {cmd[0]!r} command is neither on PATH nor beside {sys.executable}: install ray there "
                                f"(pip install verl-reweight brings it) or activate that environment")
    os.execve(exe, cmd, env)
    return 1  # not reached


def _ray_node_options(a: argparse.Namespace) -> dict[str, object]:
    """The ``ray start`` settings head and worker share, from :func:`_add_ray_node_args`'s flags."""
    return {
        "num_cpus": a.num_cpus,
        "num_gpus": a.num_gpus,
        "node_ip": a.node_ip,
        "temp_dir": a.temp_dir,
        "dashboard_agent_listen_port": a.dashboard_agent_listen_port,
        "metrics_export_port": a.metrics_export_port,
        "block": a.block,
        "extra": a.extra,
    }


def cmd_ray_head(a: argparse.Namespace) -> int:
    from reweight.launch.cluster import head_start_command, ray_start_environment

    cmd = head_start_command(
        port=a.port,
        dashboard_host=a.dashboard_host,
        dashboard_port=a.dashboard_port,
        ray_client_server_port=a.ray_client_server_port,
        **_ray_node_options(a),
    )
    return _exec_ray(cmd, ray_start_environment(a.auth, os.environ, head=True), a.dry_run)


def cmd_ray_worker(a: argparse.Namespace) -> int:
    from reweight.launch.cluster import ray_start_environment, worker_start_command

    cmd = worker_start_command(a.address, **_ray_node_options(a))
    return _exec_ray(cmd, ray_start_environment(a.auth, os.environ, head=False), a.dry_run)


def cmd_wait_nodes(a: argparse.Namespace) -> int:
    from reweight.launch.cluster import describe_nodes, wait_for_nodes

    nodes = wait_for_nodes(a.address, a.nodes, gpus_per_node=a.gpus_per_node, resource=a.resource, timeout=a.timeout)
    _say(f"{len(nodes)} node(s) up: {describe_nodes(nodes, a.resource)}")
    return 0


# ------------------------------------------------------------------------------------------------ submit


def _follow(address: str, submission_id: str, timeout: float | None) -> str:
    from reweight.launch.submit import follow_job

    status = follow_job(address, submission_id, timeout=timeout)
    _say(f"job {submission_id} finished: {status}")
    return status


def cmd_submit(a: argparse.Namespace) -> int:
    from reweight.launch.submit import check_job_fits, plan_job, submit_job

    job = plan_job(a.overrides, **_job_options(a), **_ray_check_options(a))
    for note in job.notes:
        _say("note: " + note)
    note = check_job_fits(job, a.address)
    if note:
        _say("note: " + note)
    _say(f"entrypoint: {job.entrypoint}")
    _say(f"runtime_env: {json.dumps(job.redacted_runtime_env())}")
    if a.dry_run:
        _say("dry run: checked, not submitted")
        return 0
    sid = submit_job(job, a.address, submission_id=a.submission_id)
    _say(f"submitted job {sid} to {a.address} ({job.nnodes} x {job.gpus_per_node} {job.resource}, run {job.project_name}/{job.experiment_name})")
    if not a.wait:
        return 0
    return 0 if _follow(a.address, sid, a.timeout) == "SUCCEEDED" else 1


# ------------------------------------------------------------------------------------------------ slurm


def _add_slurm_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--nodes", type=int, required=required, help="SLURM nodes = trainer.nnodes")
    p.add_argument("--gpus-per-node", type=int, required=required, help="= trainer.n_gpus_per_node")
    p.add_argument("--cpus-per-node", type=int, default=32, help="CPUs per node for SLURM and Ray's fixed --num-cpus")
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument("--time", dest="time_limit", help="SLURM time limit, e.g. 48:00:00")
    p.add_argument("--rollout-name", help="actor_rollout_ref.rollout.name unless the overrides set it (default vllm)")
    p.add_argument("--setup", action="append", default=[], help="a shell line run first in the job (module load, venv); repeatable")
    p.add_argument("--sbatch-option", action="append", default=[], help="an extra '--opt=value' for #SBATCH; repeatable")
    p.add_argument("--ray-port", type=int, default=6379)
    p.add_argument("--dashboard-port", type=int, default=8265)
    p.add_argument("--ray-auth", choices=("token", "disabled"), default="token")
    p.add_argument("--node-wait", type=int, default=900, help="seconds to wait for Ray nodes to come up")


def _slurm_spec(a: argparse.Namespace, job_name: str) -> object:
    from reweight.launch.slurm import SlurmSpec

    return SlurmSpec(
        nodes=a.nodes,
        gpus_per_node=a.gpus_per_node,
        cpus_per_node=a.cpus_per_node,
        job_name=job_name,
        partition=a.partition,
        account=a.account,
        time_limit=a.time_limit,
        ray_port=a.ray_port,
        dashboard_port=a.dashboard_port,
        node_wait_s=a.node_wait,
        ray_auth=a.ray_auth,
        setup=list(a.setup),
        extra_sbatch=list(a.sbatch_option),
    )


def cmd_slurm(a: argparse.Namespace) -> int:
    from reweight.launch.slurm import launch_slurm

    launch = launch_slurm(
        _slurm_spec(a, a.job_name),
        a.overrides,
        rollout_name=a.rollout_name,
        script_path=a.script,
        script_dir=a.script_dir,
        dry_run=a.dry_run,
        **_job_options(a),
    )
    if a.dry_run:
        print(launch.script, end="")
        _say(f"dry run: script written to {launch.script_path}; to submit it: {shlex.join(launch.command)}")
    else:
        _say(f"submitted SLURM job {launch.job_id} ({launch.script_path})")
    return 0


# ------------------------------------------------------------------------------------------------ sweep


def cmd_sweep(a: argparse.Namespace) -> int:
    from reweight.launch.sweep import default_sweep_name, point_job_ids, run_ray_sweep, run_slurm_sweep

    name = a.name or default_sweep_name()
    if a.slurm:
        if a.nodes is None or a.gpus_per_node is None:
            raise ValueError("sweep --slurm needs --nodes and --gpus-per-node")
        result = run_slurm_sweep(
            name,
            a.overrides,
            _slurm_spec(a, name),
            rollout_name=a.rollout_name,
            dry_run=a.dry_run,
            **_sweep_options(a),
        )
        if a.dry_run:
            for launch in result["launches"]:
                print(launch.script, end="")
                _say(f"to submit: {shlex.join(launch.command)}")
        return 0
    if a.dry_run:
        raise ValueError("sweep --dry-run is for --slurm; for Ray, use --validate-only (each job only checks its config)")
    manifest = run_ray_sweep(name, a.overrides, address=a.address, **_sweep_options(a), **_ray_check_options(a))
    _say(f"manifest: {manifest['path']}")
    if not a.wait:
        return 0
    from reweight.launch.submit import wait_for_jobs

    statuses = wait_for_jobs(a.address, point_job_ids(manifest), timeout=a.timeout)
    failed = {sid: s for sid, s in statuses.items() if s != "SUCCEEDED"}
    if failed:
        from reweight.launch.submit import job_logs

        for sid in failed:
            tail = job_logs(a.address, sid).splitlines()[-LOG_TAIL_LINES:]
            _say(f"last {len(tail)} log lines of {sid}:\n" + "\n".join(tail))
    _say(f"{len(statuses) - len(failed)}/{len(statuses)} jobs succeeded" + (f"; not: {failed}" if failed else ""))
    return 1 if failed else 0


def cmd_summary(a: argparse.Namespace) -> int:
    from reweight.io import write_text_atomic
    from reweight.launch.summary import summarize, to_csv, to_markdown

    columns, rows = summarize(a.manifest, address=a.address, source=a.source, wandb_dir=a.wandb_dir, metrics=a.metric or None)
    text = (to_csv if a.format == "csv" else to_markdown)(columns, rows)
    if a.output:
        write_text_atomic(a.output, text)
        _say(f"wrote {a.output}")
    else:
        print(text, end="")
    return 0


def cmd_probe(a: argparse.Namespace) -> int:
    from reweight.launch.probe import main_probe

    return main_probe(a.nodes)


def cmd_doctor(a: argparse.Namespace) -> int:
    from reweight.launch.doctor import doctor

    ok, table = doctor(a.config_name, a.overrides, a.address)
    print(table, flush=True)
    return 0 if ok else 1


# ------------------------------------------------------------------------------------------------ parser


# Each group of flags is added by one function and read back by one function, so that a flag means the
# same thing, with the same help, in every subcommand that takes it.


def _add_run_args(p: argparse.ArgumentParser, wandb_dir_help: str) -> None:
    """Flags of every subcommand that runs ``reweight-train`` (submit, slurm, sweep)."""
    p.add_argument("--config-name", help="reweight-train's --config-name (default: its default config)")
    p.add_argument("--wandb-dir", help=wandb_dir_help)
    p.add_argument("--ship-package", action="store_true", help="ship this reweight package to the nodes (py_modules)")
    p.add_argument(
        "--check-paths", action="store_true",
        help="also check the run's files here (data, model, resume checkpoint, output dir): a filesystem shared with the cluster",
    )
    p.add_argument("overrides", nargs="*", help="after --: reweight-train overrides")


def _run_options(a: argparse.Namespace) -> dict[str, object]:
    """The keyword arguments of :func:`_add_run_args`'s flags (``overrides`` apart)."""
    return {"config_name": a.config_name, "wandb_dir": a.wandb_dir, "ship_package": a.ship_package, "check_paths": a.check_paths}


def _add_job_args(p: argparse.ArgumentParser) -> None:
    """Flags of a single run (submit, slurm): :func:`_add_run_args` plus its W&B group and tags."""
    _add_run_args(p, "WANDB_DIR for the run (where offline runs are written)")
    p.add_argument("--group", help="W&B group (WANDB_RUN_GROUP) of the run")
    p.add_argument("--tag", action="append", default=[], help="W&B tag (WANDB_TAGS); repeatable")


def _job_options(a: argparse.Namespace) -> dict[str, object]:
    """The keyword arguments of :func:`_add_job_args`'s flags."""
    return {**_run_options(a), "group": a.group, "tags": a.tag}


def _add_sweep_args(p: argparse.ArgumentParser) -> None:
    """Flags of a sweep (its name = the W&B group; each point's tags are its swept values)."""
    _add_run_args(p, "WANDB_DIR for every point (default: the sweep's folder)")
    p.add_argument("--name", help="sweep name = W&B group (default sweep-<time>)")
    p.add_argument("--out-dir", default="outputs/sweeps", help="the manifest goes to <out-dir>/<name>/manifest.json")
    p.add_argument("--resume", action="store_true", help="resubmit the failed or unsubmitted points of an existing sweep")


def _sweep_options(a: argparse.Namespace) -> dict[str, object]:
    """The keyword arguments of :func:`_add_sweep_args`'s flags (the sweep's name apart), printing to stdout."""
    return {**_run_options(a), "out_dir": a.out_dir, "resume": a.resume, "out": sys.stdout}


def _add_address(p: argparse.ArgumentParser) -> None:
    """The Ray dashboard's URL (job submission and the state API go through it)."""
    p.add_argument("--address", default=default_address(), help=f"dashboard URL (default {DEFAULT_ADDRESS} or RAY_API_SERVER_ADDRESS)")


def _add_ray_job_args(p: argparse.ArgumentParser) -> None:
    """Flags of Ray jobs on an existing cluster (submit, sweep): what each job checks, and waiting for it."""
    _add_address(p)
    p.add_argument("--validate-only", action="store_true", help="the job runs reweight-train --dry-run (checks only)")
    p.add_argument("--probe-workers", action="store_true", help="the job also checks our loss in a worker on every node")
    p.add_argument("--wait", action="store_true", help="wait until the job(s) end (submit streams its logs); exit 1 unless all succeeded")
    p.add_argument("--timeout", type=float, help="seconds to --wait")


def _ray_check_options(a: argparse.Namespace) -> dict[str, object]:
    """What each Ray job checks, from :func:`_add_ray_job_args`'s flags."""
    return {"validate_only": a.validate_only, "probe_workers": a.probe_workers}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ray-head", help="start a Ray head node (with the dashboard)")
    p.add_argument("--port", type=int, default=6379, help="GCS port the workers join")
    p.add_argument("--dashboard-host", default="0.0.0.0")
    p.add_argument("--dashboard-port", type=int, default=8265)
    p.add_argument("--ray-client-server-port", type=int)
    _add_ray_node_args(p)
    p.set_defaults(func=cmd_ray_head)

    p = sub.add_parser("ray-worker", help="start a Ray worker node joining a head")
    p.add_argument("--address", required=True, help="the head's GCS host:port")
    _add_ray_node_args(p)
    p.set_defaults(func=cmd_ray_worker)

    p = sub.add_parser("wait-nodes", help="wait until the cluster has N alive nodes")
    _add_address(p)
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--resource", default="GPU")
    p.add_argument("--timeout", type=float, default=600.0)
    p.set_defaults(func=cmd_wait_nodes)

    p = sub.add_parser("submit", help="run reweight-train as a Ray job on an existing cluster")
    _add_job_args(p)
    _add_ray_job_args(p)
    p.add_argument("--submission-id")
    p.add_argument("--dry-run", action="store_true", help="check and print the job, do not submit")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("slurm", help="write (and submit) an sbatch script: Ray over the allocation, then the run")
    _add_slurm_args(p, required=True)
    _add_job_args(p)
    p.add_argument("--job-name", default="reweight")
    p.add_argument("--script", help="where to write the sbatch script")
    p.add_argument("--script-dir", default="outputs/launch/slurm")
    p.add_argument("--dry-run", action="store_true", help="write and print the script and the sbatch command; do not submit")
    p.set_defaults(func=cmd_slurm)

    p = sub.add_parser("sweep", help="a Hydra multirun as one job per point")
    _add_sweep_args(p)
    _add_ray_job_args(p)
    p.add_argument("--slurm", action="store_true", help="one SLURM job per point instead of Ray jobs on a cluster")
    _add_slurm_args(p, required=False)
    p.add_argument("--dry-run", action="store_true", help="--slurm: write and print the scripts, do not submit")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("summary", help="one table of a sweep's runs")
    p.add_argument("manifest", help="a sweep manifest.json (or its folder)")
    p.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    p.add_argument("--output", help="write the table here (atomically) instead of stdout")
    p.add_argument("--source", choices=("auto", "files", "api", "none"), default="auto", help="where W&B runs are read")
    p.add_argument("--wandb-dir", help="where offline runs are (default: the manifest's)")
    p.add_argument("--address", help="dashboard URL for job statuses (default: the manifest's)")
    p.add_argument("--metric", action="append", default=[], help="a metric column; repeatable (default: actor/reweight/* and a few)")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("doctor", help="check this node or a Ray cluster against a training config (one table)")
    p.add_argument("--address", help="a running Ray cluster (e.g. auto, or 10.0.0.1:6379): check every node; default: this node")
    p.add_argument("--config-name", help="reweight-train's --config-name (default: its default config)")
    p.add_argument("overrides", nargs="*", help="after --: reweight-train overrides")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("probe", help="(inside a job) check loss_mode reweight in a worker on every node")
    p.add_argument("--nodes", type=int, default=1)
    p.set_defaults(func=cmd_probe)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from reweight.cli_errors import run_cli, user_errors
    from reweight.file_checks import require_output

    args = build_parser().parse_args(argv)

    def body() -> int:
        # where a command writes, checked before it composes, checks or submits anything
        require_output(getattr(args, "out_dir", None), "--out-dir", "dir")
        require_output(getattr(args, "script", None), "--script")
        require_output(getattr(args, "output", None), "--output")
        return args.func(args)

    return run_cli(f"{PROG} {args.command}", body, user_errors((RuntimeError,)))


if __name__ == "__main__":
    sys.exit(main())
