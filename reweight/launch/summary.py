"""A sweep's runs in one table: manifest points x job status x W&B run (API online, run files offline).

For each point of a sweep manifest: its swept values, W&B run name, job id and status (Ray's job API,
or ``sacct`` for SLURM), and the W&B run of the sweep's group with that name: its id, state, last step
and the last value of each metric (our ``actor/reweight/*`` and a few of verl's by default). Online the
runs come from ``wandb.Api()``; offline (or when asked) from ``<WANDB_DIR>/wandb/offline-run-*/run-*.wandb``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reweight.launch.overrides import short_names
from reweight.launch.sweep import read_manifest

METRIC_PREFIXES = ("actor/reweight/",)
DEFAULT_METRICS = ("critic/score/mean", "actor/pg_loss", "response_length/mean")
MISSING = ""


@dataclass
class RunInfo:
    """A W&B run as the summary needs it."""

    run_id: str
    name: str
    state: str
    values: dict[str, Any]


def offline_runs_by_name(wandb_dir: str | Path, group: str) -> dict[str, RunInfo]:
    """The group's offline runs under ``wandb_dir``, by run name (the latest start wins)."""
    from reweight.launch.wandb_files import find_offline_runs

    runs: dict[str, tuple[float, RunInfo]] = {}
    for run in find_offline_runs(wandb_dir):
        if run.group != group:
            continue
        info = RunInfo(run.run_id, run.name, run.state, run.last_values())
        if run.name not in runs or run.start_time >= runs[run.name][0]:
            runs[run.name] = (run.start_time, info)
    return {name: info for name, (_, info) in runs.items()}


def online_runs_by_name(project: str, group: str, entity: str | None = None) -> dict[str, RunInfo]:
    """The group's runs from the W&B API, by run name (needs credentials and network)."""
    import wandb

    api = wandb.Api()
    path = f"{entity or api.default_entity}/{project}"
    runs: dict[str, RunInfo] = {}
    for run in api.runs(path, filters={"group": group}):
        runs[run.name] = RunInfo(run.id, run.name, run.state, run_summary(run))
    return runs


def run_summary(run: Any) -> dict[str, Any]:
    """A ``wandb.Api()`` run's summary as plain JSON values, through wandb's public ``Run.summary_metrics``.

    (``run.summary`` would turn nested values into lazy objects and read tensors from a local h5 file.)
    The field may arrive as JSON text, which wandb decodes the same way. Anything but a mapping means
    a wandb whose API changed: refused, naming the installed version.
    """
    values = run.summary_metrics
    if isinstance(values, (str, bytes, bytearray)):
        values = json.loads(values)
    if not isinstance(values, Mapping):
        import wandb

        raise TypeError(
            f"wandb {wandb.__version__}: Run.summary_metrics is a {type(values).__name__}, not a mapping; "
            f"reweight-launch summary was written against wandb 0.31 (use --source files for offline runs)"
        )
    return dict(values)


def _job_statuses(manifest: Mapping[str, Any], address: str | None) -> dict[str, str]:
    ids = [p["job_id"] for p in manifest["points"] if p.get("job_id")]
    statuses: dict[str, str] = {}
    if manifest["backend"] == "ray":
        from reweight.launch.submit import job_status

        address = address or manifest.get("address")
        for jid in ids:
            try:
                statuses[jid] = job_status(address, jid)
            except Exception:
                statuses[jid] = "unknown (cluster unreachable)"
    else:
        from reweight.launch.sweep import slurm_job_state

        for jid in ids:
            statuses[jid] = slurm_job_state(jid) or "unknown (no sacct)"
    return statuses


def _format(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return str(value)
    return str(value)


def summarize(
    manifest_path: str | Path,
    *,
    address: str | None = None,
    source: str = "auto",
    wandb_dir: str | Path | None = None,
    metrics: Sequence[str] | None = None,
) -> tuple[list[str], list[list[str]]]:
    """Columns and rows of the sweep's table. ``source``: ``auto`` (by the manifest's W&B mode),
    ``files`` (offline run files) or ``api`` (W&B API)."""
    manifest = read_manifest(manifest_path)
    wb = manifest.get("wandb", {})
    group = wb.get("group") or manifest["sweep"]
    if source == "auto":
        source = {"offline": "files", "dryrun": "files", "disabled": "none"}.get(wb.get("mode", "online"), "api")
    if source == "files":
        runs = offline_runs_by_name(wandb_dir or wb.get("dir") or Path(manifest_path).parent, group)
    elif source == "api":
        runs = online_runs_by_name(wb.get("project", ""), group, wb.get("entity") or None)
    elif source == "none":
        runs = {}
    else:
        raise ValueError(f"source must be auto, files, api or none; got {source!r}")
    statuses = _job_statuses(manifest, address)

    points = manifest["points"]
    swept = list(points[0]["values"]) if points else []
    short = short_names(swept)
    if metrics is None:
        found = sorted({k for r in runs.values() for k in r.values if k.startswith(METRIC_PREFIXES)})
        extra = [m for m in DEFAULT_METRICS if any(m in r.values for r in runs.values())]
        metrics = found + extra
    columns = ["point", *(short[k] for k in swept), "run_name", "job_id", "job_status", "wandb_run", "wandb_state", "step", *metrics]
    rows = []
    for p in points:
        run = runs.get(p["experiment_name"])
        values = run.values if run else {}
        rows.append(
            [
                str(p["index"]),
                *(p["values"][k] for k in swept),
                p["experiment_name"],
                p.get("job_id") or MISSING,
                statuses.get(p.get("job_id") or "", "not submitted"),
                run.run_id if run else "(no run)",
                run.state if run else MISSING,
                _format(values.get("_step")),
                *(_format(values.get(m)) for m in metrics),
            ]
        )
    return columns, rows


def to_markdown(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buf.getvalue()
