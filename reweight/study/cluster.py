"""Training runs of a study on a cluster, through the launch layer (one Ray job or one SLURM job per run).

The evaluation steps then run where ``reweight-study`` runs, reading the checkpoints from the shared
file system, so ``OUT`` must be visible from the cluster's nodes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reweight.study.pipeline import Run, Study

POLL_S = 30.0


def plan_run(study: "Study", run: "Run", dry_run: bool) -> dict[str, Any]:
    """What would be launched for ``run``: the local command, the Ray job, or the written sbatch script."""
    import shlex

    opts = study.launch_options
    if study.launch == "local":
        return {"run": run.name, "command": shlex.join(study.train_command(run))}
    config_name = None if study.spec.config_name == "embedded" else study.spec.config_name
    if study.launch == "ray":
        from reweight.launch.submit import plan_job

        job = plan_job(run.overrides, config_name=config_name, group=study.out.name, ship_package=bool(opts.get("ship_package")))
        return {"run": run.name, "ray_job": job.entrypoint, "nodes": job.nnodes, "gpus_per_node": job.gpus_per_node, "job": job}
    from reweight.launch.slurm import SlurmSpec, launch_slurm

    spec = SlurmSpec(
        nodes=int(opts.get("nodes") or 1), gpus_per_node=int(opts.get("gpus_per_node") or 8),
        job_name=f"{study.out.name}-{run.arm}-s{run.seed}".replace(" ", "_"),
        partition=opts.get("partition"), account=opts.get("account"), time_limit=opts.get("time_limit"),
    )
    launch = launch_slurm(
        spec, run.overrides, config_name=config_name, script_path=study.out / "slurm" / f"{run.arm}_s{run.seed}.sbatch",
        group=study.out.name, dry_run=dry_run,
    )
    return {"run": run.name, "sbatch": str(launch.script_path), "command": " ".join(launch.command), "job_id": launch.job_id}


def train_on_cluster(study: "Study", run: "Run", dry_run: bool = False) -> None:
    """Submit ``run`` and wait for it to end; raises if the job did not succeed."""
    from reweight.study.pipeline import StudyStepError

    planned = plan_run(study, run, dry_run)
    if study.launch == "ray":
        from reweight.launch.submit import follow_job, submit_job

        address = study.launch_options.get("address") or "auto"
        job_id = submit_job(planned["job"], address)
        study.log(f"[study] {run.name}: Ray job {job_id} submitted")
        with open(run.root / "train.log", "a") as log:  # the job's output, like a local run's
            status = follow_job(address, job_id, out=log)
        if status != "SUCCEEDED":
            raise StudyStepError(f"train {run.name}: Ray job {job_id} ended {status}")
        return
    from reweight.launch.sweep import slurm_job_state

    job_id = planned["job_id"]
    study.log(f"[study] {run.name}: SLURM job {job_id} submitted ({planned['sbatch']})")
    while True:
        state = slurm_job_state(job_id)
        if state in ("COMPLETED",):
            return
        if state is not None and state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED"):
            raise StudyStepError(f"train {run.name}: SLURM job {job_id} ended {state}")
        time.sleep(POLL_S)
