"""A Hydra multirun as one job per point: one Ray job each on a cluster, or one SLURM job each.

verl has no sweep support of its own, and running Hydra's multirun points one after another inside one
Ray session leaks actors and GPU memory between points. Here every point is its own ``reweight-train``
process in its own job; the points share a W&B group (the sweep's name), each point's swept values are
its W&B tags (and, through verl's logging of the resolved config, in its W&B config), and a manifest
(``<out_dir>/<sweep>/manifest.json``, rewritten atomically after every submission) records what was
submitted so that ``reweight-launch summary`` can read the runs back and ``--resume`` can resubmit
what failed.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from reweight.io import write_text_atomic
from reweight.launch.overrides import expand_sweep, short_names
from reweight.launch.wandb_env import clip_tag, wandb_mode

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
EXPERIMENT_KEY = "trainer.experiment_name"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
RESUBMIT_STATUSES = ("FAILED", "STOPPED")  # Ray job statuses that --resume submits again
# SLURM job states (sacct, first word) that --resume submits again
SLURM_RESUBMIT_STATES = ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED")


class SweepError(ValueError):
    """A sweep that cannot be planned or submitted as asked."""


@dataclass
class PlannedPoint:
    """A sweep point ready to submit: its full override list, swept values, W&B name and tags."""

    index: int
    overrides: list[str]
    values: dict[str, str]
    experiment_name: str
    tags: list[str]
    job_id: str | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name or ""):
        raise SweepError(f"sweep name {name!r}: use letters, digits, '.', '_' and '-' (it names files, jobs and a W&B group)")
    return name


def default_sweep_name() -> str:
    return time.strftime("sweep-%Y%m%d-%H%M%S")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def plan_points(name: str, overrides: Sequence[str]) -> list[PlannedPoint]:
    """Expand ``overrides`` and give each point its experiment name and tags.

    The W&B run name (``trainer.experiment_name``, also verl's checkpoint folder) is
    ``<prefix>-<index>-<key>_<value>...`` with ``<prefix>`` the sweep name, or the
    ``trainer.experiment_name`` the overrides set; a sweep over ``trainer.experiment_name`` itself keeps
    the user's names.
    """
    check_name(name)
    points = expand_sweep(overrides)
    if not points:
        raise SweepError("the overrides expand to no points")
    swept = list(points[0].values)
    if not swept:
        raise SweepError(
            "nothing is swept: write at least one key with several values (key=a,b or range(...) or choice(...)); "
            "use `reweight-launch submit` for a single run"
        )
    short = short_names(swept)
    planned = []
    for p in points:
        experiment_override = [o for o in p.overrides if o.lstrip("+").split("=", 1)[0] == EXPERIMENT_KEY]
        if EXPERIMENT_KEY in p.values:
            experiment = p.values[EXPERIMENT_KEY]
            point_overrides = list(p.overrides)
        else:
            prefix = experiment_override[-1].split("=", 1)[1] if experiment_override else name
            slug = "-".join(f"{_slug(short[k])}_{_slug(v)}" for k, v in p.values.items())
            experiment = f"{_slug(prefix)}-{p.index:02d}-{slug}"[:128]
            point_overrides = [o for o in p.overrides if o not in experiment_override] + [f"{EXPERIMENT_KEY}={experiment}"]
        tags = [clip_tag(f"sweep:{name}")] + [clip_tag(f"{short[k]}={v}") for k, v in p.values.items()]
        planned.append(PlannedPoint(p.index, point_overrides, dict(p.values), experiment, tags))
    names = [p.experiment_name for p in planned]
    if len(set(names)) != len(names):
        raise SweepError(f"two points would share a W&B run name: {sorted(n for n in names if names.count(n) > 1)}")
    return planned


# ------------------------------------------------------------------------------------------------ manifest


def manifest_path(out_dir: str | os.PathLike, name: str) -> Path:
    return Path(out_dir).expanduser().resolve() / check_name(name) / MANIFEST_NAME


def write_manifest(path: str | os.PathLike, manifest: Mapping[str, Any]) -> None:
    write_text_atomic(path, json.dumps(manifest, indent=2, sort_keys=False) + "\n")


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise SweepError(f"no sweep manifest at {path}") from None
    except json.JSONDecodeError as e:
        raise SweepError(f"{path} is not a sweep manifest (bad JSON: {e})") from e
    if manifest.get("version") != MANIFEST_VERSION or "points" not in manifest:
        raise SweepError(f"{path} is not a version-{MANIFEST_VERSION} sweep manifest")
    return manifest


def _new_manifest(name: str, backend: str, config_name: str | None, overrides: Sequence[str], points: list[PlannedPoint], **extra: Any) -> dict[str, Any]:
    return {
        "version": MANIFEST_VERSION,
        "sweep": name,
        "backend": backend,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config_name": config_name,
        "overrides": list(overrides),
        **extra,
        "points": [asdict(p) for p in points],
    }


def _load_for_resume(path: Path, name: str, backend: str, config_name: str | None, overrides: Sequence[str], resume: bool) -> dict[str, Any] | None:
    if not path.exists():
        return None
    if not resume:
        raise SweepError(
            f"sweep {name!r} already has a manifest at {path}; pass --resume to resubmit its failed or "
            f"unsubmitted points, or choose another --name"
        )
    manifest = read_manifest(path)
    if manifest["overrides"] != list(overrides) or manifest.get("config_name") != config_name or manifest["backend"] != backend:
        raise SweepError(
            f"--resume: {path} was written for a different sweep (config {manifest.get('config_name')!r}, "
            f"backend {manifest['backend']}, overrides {manifest['overrides']}); choose another --name"
        )
    return manifest


# ------------------------------------------------------------------------------------------------ shared path


@dataclass
class _SweepStart:
    """What both backends start from: the environment, the manifest's path, the planned points, the
    manifest of an earlier submission (``--resume``) or None, and the W&B directory of every point."""

    environ: dict[str, str]
    path: Path
    points: list[PlannedPoint]
    manifest: dict[str, Any] | None
    wandb_dir: Path


def _start(
    name: str,
    overrides: Sequence[str],
    backend: str,
    *,
    out_dir: str | os.PathLike,
    config_name: str | None,
    environ: Mapping[str, str] | None,
    wandb_dir: str | os.PathLike | None,
    resume: bool,
    read_earlier: bool = True,
) -> _SweepStart:
    """Plan the points and read an earlier manifest (refused without ``resume``; not read when
    ``read_earlier`` is false, a dry run). W&B writes to ``wandb_dir``, else WANDB_DIR, else the sweep's folder."""
    environ = dict(os.environ if environ is None else environ)
    path = manifest_path(out_dir, name)
    points = plan_points(name, overrides)
    manifest = _load_for_resume(path, name, backend, config_name, overrides, resume) if read_earlier else None
    if wandb_dir is None:
        wandb_dir = environ.get("WANDB_DIR") or path.parent
    return _SweepStart(environ, path, points, manifest, Path(wandb_dir).expanduser().resolve())


def _plan_each(points: Sequence[PlannedPoint], plan: Callable[[PlannedPoint], Any]) -> list[Any]:
    """``plan(point)`` for every point, before anything is submitted; an error names its point."""
    jobs = []
    for p in points:
        try:
            jobs.append(plan(p))
        except Exception as e:
            raise SweepError(f"sweep point {p.index} ({' '.join(p.overrides)}): {e}") from e
    return jobs


def _open_manifest(
    start: _SweepStart, name: str, backend: str, config_name: str | None, overrides: Sequence[str], project: str, **extra: Any
) -> dict[str, Any]:
    """The earlier manifest (``--resume``), or a new one written now, before the first submission."""
    if start.manifest is not None:
        return start.manifest
    env = start.environ
    wandb = {"mode": wandb_mode(env), "dir": str(start.wandb_dir), "group": name, "project": project,
             "entity": env.get("WANDB_ENTITY", ""), "base_url": env.get("WANDB_BASE_URL", "")}
    manifest = _new_manifest(name, backend, config_name, overrides, start.points, **extra, wandb=wandb)
    write_manifest(start.path, manifest)
    return manifest


def _resubmittable(status: str | None, states: Sequence[str]) -> bool:
    """Whether a job whose state is ``status`` (``None``: unknown) is submitted again by ``--resume``."""
    return status is not None and status.split()[0] in states


def _submit_each(
    start: _SweepStart,
    jobs: Sequence[Any],
    manifest: dict[str, Any] | None,
    *,
    state_of: Callable[[str], str | None],
    resubmit_states: Sequence[str],
    submit: Callable[[PlannedPoint, Any], tuple[dict[str, Any], str]],
    out: TextIO | None,
) -> None:
    """Submit every point that has no job yet, or whose job ended in one of ``resubmit_states``.

    ``submit(point, job)`` returns the fields it adds to the point's manifest entry and the end of the
    line printed for it; the manifest (None in a dry run) is rewritten after every submission, so an
    interrupted sweep can be resumed from it.
    """
    for p, job in zip(start.points, jobs, strict=True):
        entry = manifest["points"][p.index] if manifest is not None else {}
        if entry.get("job_id"):
            status = state_of(entry["job_id"])
            if not _resubmittable(status, resubmit_states):
                if out is not None:
                    print(f"[reweight-launch] point {p.index}: job {entry['job_id']} is {status}; not resubmitted", file=out)
                continue
            entry.setdefault("attempts", []).append({"job_id": entry["job_id"], "status": status})
        fields, said = submit(p, job)
        if manifest is not None:
            entry.update(fields, submitted=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            write_manifest(start.path, manifest)
        if out is not None:
            print(f"[reweight-launch] point {p.index} {p.values}{said}", file=out, flush=True)


# ------------------------------------------------------------------------------------------------ Ray


def run_ray_sweep(
    name: str,
    overrides: Sequence[str],
    *,
    address: str,
    out_dir: str | os.PathLike = "outputs/sweeps",
    config_name: str | None = None,
    environ: Mapping[str, str] | None = None,
    validate_only: bool = False,
    probe_workers: bool = False,
    ship_package: bool = False,
    wandb_dir: str | os.PathLike | None = None,
    resume: bool = False,
    out: TextIO | None = None,
    check_paths: bool = False,
) -> dict[str, Any]:
    """Plan every point, check them all (configs, W&B, cluster), then submit one Ray job per point."""
    from reweight.launch.cluster import check_cluster_fits, cluster_nodes, dashboard_url
    from reweight.launch.submit import job_status, plan_job, submit_job

    start = _start(name, overrides, "ray", out_dir=out_dir, config_name=config_name, environ=environ,
                   wandb_dir=wandb_dir, resume=resume)
    jobs = _plan_each(start.points, lambda p: plan_job(
        p.overrides, config_name=config_name, environ=start.environ, validate_only=validate_only,
        probe_workers=probe_workers, group=name, tags=p.tags, wandb_dir=start.wandb_dir, ship_package=ship_package,
        extra_metadata={"reweight.sweep": name, "reweight.point": str(p.index)}, check_paths=check_paths,
    ))
    nodes = cluster_nodes(address)
    for job in jobs:
        check_cluster_fits(job.nnodes, job.gpus_per_node, nodes, job.resource)
    if start.manifest is None:
        start.wandb_dir.mkdir(parents=True, exist_ok=True)
    manifest = _open_manifest(start, name, "ray", config_name, overrides, jobs[0].project_name, address=dashboard_url(address))

    def submit(p: PlannedPoint, job: Any) -> tuple[dict[str, Any], str]:
        job_id = submit_job(job, address, submission_id=f"{name}-{p.index:02d}-{uuid.uuid4().hex[:6]}")
        return {"job_id": job_id}, f" -> job {job_id} ({p.experiment_name})"

    _submit_each(start, jobs, manifest, state_of=lambda jid: job_status(address, jid),
                 resubmit_states=RESUBMIT_STATUSES, submit=submit, out=out)
    manifest["path"] = str(start.path)
    return manifest


# ------------------------------------------------------------------------------------------------ SLURM


def run_slurm_sweep(
    name: str,
    overrides: Sequence[str],
    spec: Any,
    *,
    out_dir: str | os.PathLike = "outputs/sweeps",
    config_name: str | None = None,
    rollout_name: str | None = None,
    environ: Mapping[str, str] | None = None,
    wandb_dir: str | os.PathLike | None = None,
    ship_package: bool = False,
    resume: bool = False,
    dry_run: bool = False,
    out: TextIO | None = None,
    check_paths: bool = False,
) -> dict[str, Any]:
    """One SLURM job (its own Ray cluster) per point; a dry run writes and prints the scripts only."""
    from dataclasses import replace

    from reweight.launch.slurm import launch_slurm, slurm_training_overrides
    from reweight.launch.submit import plan_job

    start = _start(name, overrides, "slurm", out_dir=out_dir, config_name=config_name, environ=environ,
                   wandb_dir=wandb_dir, resume=resume, read_earlier=not dry_run)
    jobs = _plan_each(start.points, lambda p: plan_job(
        slurm_training_overrides(spec.nodes, spec.gpus_per_node, p.overrides, rollout_name),
        config_name=config_name, environ=start.environ, group=name, tags=p.tags, check_paths=check_paths,
    ))
    manifest = None if dry_run else _open_manifest(start, name, "slurm", config_name, overrides, jobs[0].project_name)

    launches = []

    def submit(p: PlannedPoint, job: Any) -> tuple[dict[str, Any], str]:
        launch = launch_slurm(
            replace(spec, job_name=f"{name}-{p.index:02d}"), p.overrides, config_name=config_name, rollout_name=rollout_name,
            script_path=start.path.parent / f"point-{p.index:02d}.sbatch", environ=start.environ, group=name, tags=p.tags,
            wandb_dir=str(start.wandb_dir), ship_package=ship_package, dry_run=dry_run, check_paths=check_paths,
        )
        launches.append(launch)
        return {"job_id": launch.job_id, "script": str(launch.script_path)}, f": {launch.script_path}"

    _submit_each(start, jobs, manifest, state_of=slurm_job_state, resubmit_states=SLURM_RESUBMIT_STATES, submit=submit, out=out)
    result = manifest if manifest is not None else {"sweep": name, "dry_run": True, "points": [asdict(p) for p in start.points]}
    result["launches"] = launches
    return result


def slurm_job_state(job_id: str) -> str | None:
    """The job's state from ``sacct`` (e.g. COMPLETED, FAILED, RUNNING), or None without SLURM accounting."""
    import shutil
    import subprocess

    if shutil.which("sacct") is None:
        return None
    r = subprocess.run(["sacct", "-j", str(job_id), "-X", "-n", "-P", "-o", "State"], capture_output=True, text=True)
    lines = [line.strip() for line in r.stdout.splitlines() if line.strip()]
    return lines[0] if r.returncode == 0 and lines else None


def point_job_ids(manifest: Mapping[str, Any]) -> list[str]:
    return [p["job_id"] for p in manifest["points"] if p.get("job_id")]
