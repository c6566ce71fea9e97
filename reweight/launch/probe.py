"""Inside a job: is loss_mode ``reweight`` registered in a Ray worker process on every node?

``reweight-launch probe --nodes N`` (appended to a job's entrypoint by ``submit --probe-workers``)
connects to the job's cluster, runs one task pinned to each alive node, and in that worker process
reports whether the job's ``worker_process_setup_hook`` had already imported our loss before the task
ran, and whether ``verl.trainer.ppo.core_algos.POLICY_LOSS_REGISTRY`` has ``reweight`` after
``import verl`` (which also loads the ``verl.plugins`` entry point). Exits 1 unless every node of at
least ``N`` says yes.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

LINE_PREFIX = "reweight-probe"


def _report_from_worker() -> dict[str, Any]:
    import os
    import socket

    import ray

    hook_ran = "reweight.loss" in sys.modules  # before this task imports anything of ours
    import verl  # noqa: F401  (loads verl.plugins entry points)
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY

    import reweight

    return {
        "node_id": ray.get_runtime_context().get_node_id(),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "setup_hook_ran": hook_ran,
        "loss_registered": "reweight" in POLICY_LOSS_REGISTRY,
        "reweight_file": reweight.__file__,
    }


def on_every_node(fn, min_nodes: int = 1, timeout: float = 600.0, args: tuple = ()) -> list[Any]:
    """``fn(*args)`` in a worker process on each alive node (a task pinned to it; connects with ``ray.init()``)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not ray.is_initialized():
        ray.init()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < min_nodes:
        raise RuntimeError(f"the cluster has {len(nodes)} alive node(s); expected at least {min_nodes}")
    remote = ray.remote(num_cpus=0)(fn)
    refs = [
        remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=n["NodeID"], soft=False)).remote(*args)
        for n in nodes
    ]
    return ray.get(refs, timeout=timeout)


def probe_workers(min_nodes: int, timeout: float = 600.0) -> list[dict[str, Any]]:
    """One report per alive node, each from a task pinned to that node (connects with ``ray.init()``)."""
    return on_every_node(_report_from_worker, min_nodes, timeout)


def format_report(report: dict[str, Any]) -> str:
    return (
        f"{LINE_PREFIX} node={report['node_id']} host={report['hostname']} pid={report['pid']} "
        f"setup_hook_ran={report['setup_hook_ran']} loss_registered={report['loss_registered']} "
        f"reweight_file={report['reweight_file']}"
    )


def main_probe(min_nodes: int, out: TextIO = sys.stdout) -> int:
    reports = probe_workers(min_nodes)
    for r in reports:
        print(format_report(r), file=out)
    print(f"{LINE_PREFIX} json={json.dumps(reports)}", file=out, flush=True)
    ok = len(reports) >= min_nodes and all(r["loss_registered"] for r in reports)
    if not ok:
        print(f"{LINE_PREFIX} FAILED: loss_mode reweight missing in a worker (or fewer than {min_nodes} nodes)", file=out)
    return 0 if ok else 1
