"""One ``reweight-train`` run as one Ray job on an existing cluster (``ray job submit``, through the SDK).

The flow, every check before anything is submitted:

1. compose the training config locally exactly as ``reweight-train`` will (Hydra errors name the key),
   and validate it as ``reweight-train --dry-run`` does (our checks, verl's ``validate_config``), without
   building the embedded assets; the run's files are checked on this machine only with ``check_paths``
   (they may live on the cluster only);
2. W&B: ``wandb`` in ``trainer.logger`` needs credentials or ``WANDB_MODE=offline|disabled``;
3. the cluster (its dashboard) must have ``trainer.nnodes`` nodes x ``trainer.n_gpus_per_node`` GPUs;
4. submit ``reweight-train <overrides>`` with a runtime_env that carries

   - ``worker_process_setup_hook``: registers our loss in every worker process of the job, on every node
     (:mod:`reweight.launch.worker_setup`);
   - ``py_modules`` with this ``reweight`` package, if asked (nodes where it is not installed);
   - the W&B variables from the submitting environment (:mod:`reweight.launch.wandb_env`), plus the
     sweep's group and tags.

Inside the job, verl's ``ray.init`` connects to this cluster (Ray sets ``RAY_ADDRESS`` for the job) and
merges its own runtime_env into the job's.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from reweight.launch.cluster import (
    accelerator_resource,
    check_cluster_fits,
    cluster_nodes,
    dashboard_url,
    enable_client_auth,
)
from reweight.launch.wandb_env import check_wandb_credentials, job_wandb_env, wandb_mode
from reweight.launch.worker_setup import HOOK

TRAIN_COMMAND = "reweight-train"
PROBE_COMMAND = ("reweight-launch", "probe")
# ray.init(num_cpus=..., num_gpus=...) is refused when connecting to an existing cluster.
RAY_INIT_RESOURCE_KEYS = ("ray_kwargs.ray_init.num_cpus", "ray_kwargs.ray_init.num_gpus")
SECRET_VARS = ("WANDB_API_KEY",)
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class SubmitError(RuntimeError):
    """The job was not submitted, or did not succeed."""


@dataclass
class TrainingJob:
    """Everything needed to submit one ``reweight-train`` run, derived from its composed config."""

    overrides: list[str]
    config_name: str | None
    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]
    nnodes: int
    gpus_per_node: int
    resource: str
    project_name: str
    experiment_name: str
    loggers: list[str]
    wandb_mode: str
    notes: list[str] = field(default_factory=list)

    def redacted_runtime_env(self) -> dict[str, Any]:
        """The runtime_env with secrets masked, for printing."""
        env = dict(self.runtime_env)
        env["env_vars"] = {k: ("***" if k in SECRET_VARS else v) for k, v in env.get("env_vars", {}).items()}
        return env


def compose(config_name: str | None, overrides: Sequence[str]) -> Any:
    """The training config as ``reweight-train`` composes it (its default config unless named)."""
    from reweight.train import DEFAULT_CONFIG, compose_config

    return compose_config(config_name or DEFAULT_CONFIG, list(overrides))


def validate_training_config(cfg: Any, check_paths: bool = False) -> None:
    """The checks of ``reweight-train --dry-run`` on a copy of ``cfg``; raises ``ValueError`` naming the key.

    The embedded assets are not built (the job builds them where it runs); with ``check_paths`` the
    data files, model path, resume checkpoint and output directory are checked on this machine too
    (a shared filesystem, e.g. a SLURM login node).
    """
    import contextlib
    import copy
    import io
    import warnings

    from reweight.train import prepare

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # verl's chatter; the job prints it again
        warnings.simplefilter("ignore")
        prepare(copy.deepcopy(cfg), dry_run=True, build_embedded=False, local_paths=check_paths)


def training_entrypoint(
    overrides: Sequence[str], config_name: str | None = None, validate_only: bool = False, probe_nodes: int | None = None
) -> str:
    """The job's shell command: ``reweight-train [--config-name X] [--dry-run] <overrides>`` [&& the probe]."""
    args = [TRAIN_COMMAND]
    if config_name:
        args += ["--config-name", config_name]
    if validate_only:
        args.append("--dry-run")
    command = shlex.join([*args, *overrides])
    if probe_nodes is not None:
        command += " && " + shlex.join([*PROBE_COMMAND, "--nodes", str(probe_nodes)])
    return command


def package_dir() -> Path:
    """The directory of the importable ``reweight`` package (what ``py_modules`` ships)."""
    import reweight

    return Path(reweight.__file__).resolve().parent


def plan_job(
    overrides: Sequence[str],
    *,
    config_name: str | None = None,
    environ: Mapping[str, str] | None = None,
    validate_only: bool = False,
    probe_workers: bool = False,
    group: str | None = None,
    tags: Sequence[str] = (),
    wandb_dir: str | os.PathLike | None = None,
    ship_package: bool = False,
    extra_metadata: Mapping[str, str] | None = None,
    check_paths: bool = False,
) -> TrainingJob:
    """Compose and check the run's config and build its job; raises before anything is submitted."""
    from omegaconf import OmegaConf

    environ = dict(os.environ if environ is None else environ)
    overrides = list(overrides)
    notes: list[str] = []
    cfg = compose(config_name, overrides)
    validate_training_config(cfg, check_paths=check_paths)

    loggers = OmegaConf.select(cfg, "trainer.logger", default=[]) or []
    loggers = [loggers] if isinstance(loggers, str) else list(loggers)
    note = check_wandb_credentials(loggers, environ)
    if note:
        notes.append(note)

    for key in RAY_INIT_RESOURCE_KEYS:
        if OmegaConf.select(cfg, key, default=None) is not None:
            overrides.append(f"{key}=null")
            notes.append(
                f"{key}={OmegaConf.select(cfg, key)} is for a Ray that the trainer starts itself; on an existing "
                f"cluster Ray refuses it, so the job runs with {key}=null (the cluster's own resources)"
            )

    nnodes = int(cfg.trainer.nnodes)
    gpus_per_node = int(cfg.trainer.n_gpus_per_node)
    resource = accelerator_resource(OmegaConf.select(cfg, "trainer.device", default=None))
    project = str(cfg.trainer.project_name)
    experiment = str(cfg.trainer.experiment_name)

    runtime_env: dict[str, Any] = {
        # Every process of the job imports our plugin, also those that are not reweight-train (the probe),
        # whose workers get no VERL_USE_EXTERNAL_MODULES. Whether that variable alone reaches every training
        # worker depends on Ray merging the driver's ray.init runtime_env into the job's: only
        # tests/test_launch_ray.py can show it, so the hook stays (docs/architecture.md).
        "worker_process_setup_hook": HOOK,
        "env_vars": job_wandb_env(environ, group=group, tags=tags, wandb_dir=wandb_dir),
    }
    if ship_package:
        runtime_env["py_modules"] = [str(package_dir())]
        runtime_env["excludes"] = ["__pycache__", "*.pyc"]

    metadata = {
        "reweight.config_name": config_name or "",
        "reweight.project_name": project,
        "reweight.experiment_name": experiment,
        "reweight.nnodes": str(nnodes),
        "reweight.n_gpus_per_node": str(gpus_per_node),
        "reweight.group": group or "",
        **dict(extra_metadata or {}),
    }
    entrypoint = training_entrypoint(
        overrides, config_name, validate_only=validate_only, probe_nodes=nnodes if probe_workers else None
    )
    return TrainingJob(
        overrides=overrides,
        config_name=config_name,
        entrypoint=entrypoint,
        runtime_env=runtime_env,
        metadata=metadata,
        nnodes=nnodes,
        gpus_per_node=gpus_per_node,
        resource=resource,
        project_name=project,
        experiment_name=experiment,
        loggers=loggers,
        wandb_mode=wandb_mode(environ),
        notes=notes,
    )


def check_job_fits(job: TrainingJob, address: str) -> str | None:
    """Check the job's nodes x GPUs against the cluster at ``address``; raises ClusterError."""
    return check_cluster_fits(job.nnodes, job.gpus_per_node, cluster_nodes(address), job.resource)


def _client(address: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    enable_client_auth()
    return JobSubmissionClient(dashboard_url(address))


# Ray's job head answers this while no node's dashboard agent has registered with it yet (a node can be alive
# before its agent is): the request may be repeated, as the message itself says.
AGENT_NOT_READY = "No available agent to submit job"
AGENT_WAIT_S = 120.0


def submit_job(
    job: TrainingJob, address: str, submission_id: str | None = None, *, agent_wait_s: float = AGENT_WAIT_S,
    poll_s: float = 3.0, out: TextIO = sys.stderr,
) -> str:
    """Submit ``job`` to the cluster whose dashboard is at ``address``; returns the submission id.

    While Ray answers that no job agent is available yet, the submission is repeated every ``poll_s`` seconds for
    up to ``agent_wait_s`` seconds (one line says so); any other failure, or the agent still missing then, raises
    :class:`SubmitError`.
    """
    deadline = time.monotonic() + agent_wait_s
    said = False
    while True:
        try:
            return _client(address).submit_job(
                entrypoint=job.entrypoint, runtime_env=job.runtime_env, metadata=job.metadata, submission_id=submission_id
            )
        except Exception as e:
            if AGENT_NOT_READY not in str(e) or time.monotonic() + poll_s > deadline:
                raise SubmitError(f"submitting to {dashboard_url(address)} failed: {e}") from e
            if not said:
                print(f"[reweight-launch] the cluster at {dashboard_url(address)} has no job agent ready yet; "
                      f"retrying for up to {agent_wait_s:g} s", file=out, flush=True)
                said = True
            time.sleep(poll_s)


def job_status(address: str, submission_id: str) -> str:
    """The job's status name (PENDING / RUNNING / SUCCEEDED / FAILED / STOPPED)."""
    return str(_client(address).get_job_status(submission_id).value)


def job_logs(address: str, submission_id: str) -> str:
    return _client(address).get_job_logs(submission_id)


def follow_job(address: str, submission_id: str, *, timeout: float | None = None, out: TextIO = sys.stdout) -> str:
    """Stream the job's logs to ``out`` until it ends (polling if streaming fails); return its final status."""
    import asyncio

    client = _client(address)

    async def _stream() -> None:
        async for chunk in client.tail_job_logs(submission_id):
            out.write(chunk)
            out.flush()

    streamed = False
    try:
        asyncio.run(asyncio.wait_for(_stream(), timeout))
        streamed = True
    except asyncio.TimeoutError:
        raise SubmitError(f"timed out after {timeout:g}s waiting for job {submission_id}") from None
    except Exception as e:  # no websocket support, a proxy in the way...: poll instead
        print(f"[reweight-launch] cannot stream the logs of {submission_id} ({e}); polling", file=out, flush=True)
    status = wait_for_jobs(address, [submission_id], timeout=timeout if not streamed else 120.0, out=None)[submission_id]
    if not streamed:
        out.write(client.get_job_logs(submission_id))
    return status


def wait_for_jobs(
    address: str,
    submission_ids: Sequence[str],
    *,
    timeout: float | None = None,
    poll: float = 2.0,
    out: TextIO | None = sys.stdout,
) -> dict[str, str]:
    """Poll until every job is terminal (or ``timeout`` seconds pass); returns id -> final status."""
    client = _client(address)
    deadline = None if timeout is None else time.monotonic() + timeout
    status: dict[str, str] = {}
    while True:
        for sid in submission_ids:
            if status.get(sid) in TERMINAL:
                continue
            new = str(client.get_job_status(sid).value)
            if new != status.get(sid) and out is not None:
                print(f"[reweight-launch] job {sid}: {new}", file=out, flush=True)
            status[sid] = new
        if all(s in TERMINAL for s in status.values()):
            return status
        if deadline is not None and time.monotonic() >= deadline:
            raise SubmitError(
                f"timed out after {timeout:g}s waiting for jobs: "
                + ", ".join(f"{sid}={s}" for sid, s in status.items())
            )
        time.sleep(poll)
