"""Ray cluster bring-up and inspection for ``reweight-train`` jobs.

- ``ray start`` command lines for a head node (with the dashboard, which job submission needs) and for
  worker nodes joining it; an explicit ``RAY_AUTH_MODE`` for both (Ray 2.5x+ turns token authentication
  on for a head by default but a worker started without the variable does not send the token, so a
  mixed cluster cannot form);
- the cluster's alive nodes and their resources, read from the dashboard's state API (no ``ray.init``);
- the fit check: ``trainer.nnodes`` nodes with ``trainer.n_gpus_per_node`` accelerators each, exactly
  what verl's resource pool asks of Ray's placement groups; a clear error before anything is submitted.
"""

from __future__ import annotations

import importlib
import inspect
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_GCS_PORT = 6379
DEFAULT_DASHBOARD_PORT = 8265
AUTH_MODES = ("token", "disabled")
RAY_TOKEN_AUTH_SWITCH = "ray._private.authentication.authentication_token_setup.maybe_enable_token_auth_if_token_available"
RAY_TESTED_VERSION = "2.60.0"


class ClusterError(RuntimeError):
    """The Ray cluster cannot run the job as configured (unreachable, too small, wrong shape)."""


@dataclass(frozen=True)
class NodeInfo:
    """An alive Ray node: its id, IP, whether it is the head, and its total resources."""

    node_id: str
    ip: str
    is_head: bool
    resources: dict[str, float] = field(default_factory=dict)


def dashboard_url(address: str) -> str:
    """``host:port`` or ``http://host:port`` -> ``http://host:port`` (the job / state API address)."""
    address = address.strip().rstrip("/")
    if "://" not in address:
        address = "http://" + address
    return address


# --------------------------------------------------------------------------------------------- ray start


def _opt(flag: str, value: object) -> list[str]:
    return [] if value is None else [f"--{flag}={value}"]


def head_start_command(
    *,
    port: int = DEFAULT_GCS_PORT,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    dashboard_host: str = "0.0.0.0",
    dashboard_port: int = DEFAULT_DASHBOARD_PORT,
    node_ip: str | None = None,
    temp_dir: str | None = None,
    dashboard_agent_listen_port: int | None = None,
    ray_client_server_port: int | None = None,
    metrics_export_port: int | None = None,
    block: bool = False,
    extra: Sequence[str] = (),
) -> list[str]:
    """``ray start --head ...`` with the dashboard on (job submission goes through it)."""
    cmd = ["ray", "start", "--head", f"--port={port}"]
    cmd += _opt("node-ip-address", node_ip)
    cmd += _opt("num-cpus", num_cpus) + _opt("num-gpus", num_gpus)
    cmd += ["--include-dashboard=true", f"--dashboard-host={dashboard_host}", f"--dashboard-port={dashboard_port}"]
    cmd += _opt("dashboard-agent-listen-port", dashboard_agent_listen_port)
    cmd += _opt("ray-client-server-port", ray_client_server_port)
    cmd += _opt("metrics-export-port", metrics_export_port)
    cmd += _opt("temp-dir", temp_dir)
    cmd += ["--disable-usage-stats"]
    cmd += ["--block"] if block else []
    return cmd + list(extra)


def worker_start_command(
    address: str,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    node_ip: str | None = None,
    temp_dir: str | None = None,
    dashboard_agent_listen_port: int | None = None,
    metrics_export_port: int | None = None,
    block: bool = False,
    extra: Sequence[str] = (),
) -> list[str]:
    """``ray start --address=<head gcs host:port> ...`` for a node joining the head."""
    if not address or "://" in address:
        raise ValueError(f"a worker joins the head's GCS address host:port (e.g. 10.0.0.1:6379), got {address!r}")
    cmd = ["ray", "start", f"--address={address}"]
    cmd += _opt("node-ip-address", node_ip)
    cmd += _opt("num-cpus", num_cpus) + _opt("num-gpus", num_gpus)
    cmd += _opt("dashboard-agent-listen-port", dashboard_agent_listen_port)
    cmd += _opt("metrics-export-port", metrics_export_port)
    cmd += _opt("temp-dir", temp_dir)
    cmd += ["--disable-usage-stats"]
    cmd += ["--block"] if block else []
    return cmd + list(extra)


def ray_token_available(environ: Mapping[str, str]) -> bool:
    """Whether Ray can find an auth token: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token."""
    if environ.get("RAY_AUTH_TOKEN"):
        return True
    path = environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        return Path(path).expanduser().is_file()
    home = environ.get("HOME") or os.path.expanduser("~")
    return (Path(home) / ".ray" / "auth_token").is_file()


def ray_start_environment(auth: str, environ: Mapping[str, str], *, head: bool) -> dict[str, str]:
    """The environment for ``ray start``: ``environ`` plus RAY_AUTH_MODE and usage stats off.

    A worker in token mode needs the head's token; without one it could never join: refused here.
    """
    if auth not in AUTH_MODES:
        raise ValueError(f"auth must be one of {AUTH_MODES}, got {auth!r}")
    if auth == "token" and not head and not ray_token_available(environ):
        raise ClusterError(
            "auth=token but no Ray auth token on this node: copy the head's ~/.ray/auth_token here "
            "(a shared home directory does it), or export RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH; "
            "or start every node with --auth disabled"
        )
    env = dict(environ)
    env["RAY_AUTH_MODE"] = auth
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def enable_client_auth(environ: Mapping[str, str] | None = None) -> None:
    """Let this process's Ray HTTP clients send the auth token when one is available.

    Ray's clients only attach the token in token mode; with RAY_AUTH_MODE unset they stay in disabled
    mode even when ~/.ray/auth_token exists. Ray's own helper switches to token mode in that case.
    """
    environ = os.environ if environ is None else environ
    if environ.get("RAY_AUTH_MODE") is not None:
        return
    ray_token_auth_switch()(warn_if_disabled=False)


def ray_token_auth_switch() -> Callable[..., bool]:
    """Ray's own "token mode if a token exists" function, the one private Ray API this package calls.

    Ray has no public equivalent (``ray start`` and ``ray.init`` call it internally). A Ray without it,
    or with another signature, is refused naming the installed version; setting RAY_AUTH_MODE avoids the call.
    """
    import ray

    module, _, name = RAY_TOKEN_AUTH_SWITCH.rpartition(".")
    try:
        switch = getattr(importlib.import_module(module), name)
        takes_warn_flag = "warn_if_disabled" in inspect.signature(switch).parameters
    except (ImportError, AttributeError, TypeError, ValueError):
        takes_warn_flag = False
    if not takes_warn_flag:
        raise ClusterError(
            f"ray {ray.__version__} has no {RAY_TOKEN_AUTH_SWITCH}(warn_if_disabled=...), which reweight-launch "
            f"calls when RAY_AUTH_MODE is unset (written against ray {RAY_TESTED_VERSION}); "
            f"export RAY_AUTH_MODE=token (or disabled), as the cluster was started"
        )
    return switch


# --------------------------------------------------------------------------------------------- inspect


def cluster_nodes(address: str, timeout: float = 30.0) -> list[NodeInfo]:
    """The cluster's alive nodes, from the dashboard at ``address``; :class:`ClusterError` if unreachable."""
    from ray.util.state import list_nodes

    url = dashboard_url(address)
    enable_client_auth()
    try:
        states = list_nodes(address=url, filters=[("state", "=", "ALIVE")], timeout=int(timeout), raise_on_missing_output=False)
    except Exception as e:  # ConnectionError, RayStateApiException, AuthenticationError ...
        raise ClusterError(f"cannot read the Ray cluster's nodes from the dashboard at {url}: {e}") from e
    return [
        NodeInfo(node_id=s.node_id, ip=s.node_ip, is_head=bool(s.is_head_node), resources=dict(s.resources_total or {}))
        for s in states
    ]


def accelerator_resource(device: str | None) -> str:
    """Ray's resource name for ``trainer.device`` (verl schedules NPUs as ``NPU``, everything else as ``GPU``)."""
    return "NPU" if (device or "").lower() == "npu" else "GPU"


def describe_nodes(nodes: Sequence[NodeInfo], resource: str) -> str:
    parts = [f"{n.ip}{' (head)' if n.is_head else ''}: {n.resources.get(resource, 0):g} {resource}" for n in nodes]
    return "; ".join(parts) if parts else "no alive nodes"


def check_cluster_fits(nnodes: int, gpus_per_node: int, nodes: Sequence[NodeInfo], resource: str = "GPU") -> str | None:
    """Raise :class:`ClusterError` unless ``nnodes`` nodes each have ``gpus_per_node`` of ``resource``.

    verl asks Ray for ``nnodes`` placement-group bundles of ``n_gpus_per_node`` accelerators, one per node;
    a cluster without enough such nodes leaves the job pending or failing deep inside verl. Returns a note
    when the job uses less than the whole cluster, else None.
    """
    if nnodes < 1 or gpus_per_node < 1:
        raise ClusterError(
            f"trainer.nnodes={nnodes} and trainer.n_gpus_per_node={gpus_per_node} must both be at least 1"
        )
    fitting = [n for n in nodes if n.resources.get(resource, 0) >= gpus_per_node]
    total = sum(n.resources.get(resource, 0) for n in nodes)
    if len(fitting) < nnodes:
        raise ClusterError(
            f"trainer.nnodes={nnodes} x trainer.n_gpus_per_node={gpus_per_node} needs {nnodes} node(s) with at "
            f"least {gpus_per_node} {resource} each ({nnodes * gpus_per_node} {resource} in all), but the cluster has "
            f"{len(fitting)} such node(s) among {len(nodes)} alive ({total:g} {resource} in all: {describe_nodes(nodes, resource)}). "
            f"Set trainer.nnodes / trainer.n_gpus_per_node to the cluster's shape, or add nodes."
        )
    if nnodes * gpus_per_node < total:
        return (
            f"the job uses {nnodes} x {gpus_per_node} {resource} of the cluster's {total:g} "
            f"({describe_nodes(nodes, resource)})"
        )
    return None


def wait_for_nodes(
    address: str,
    count: int,
    *,
    gpus_per_node: int = 0,
    resource: str = "GPU",
    timeout: float = 600.0,
    poll: float = 2.0,
) -> list[NodeInfo]:
    """Block until ``count`` alive nodes (each with ``gpus_per_node`` of ``resource``) are up; return them."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    nodes: list[NodeInfo] = []
    while True:
        try:
            nodes = cluster_nodes(address, timeout=min(30.0, max(timeout, 1.0)))
            last_error = None
            ready = [n for n in nodes if n.resources.get(resource, 0) >= gpus_per_node]
            if len(ready) >= count:
                return nodes
        except ClusterError as e:  # the head's dashboard may not be up yet
            last_error = e
        if time.monotonic() >= deadline:
            seen = f"last error: {last_error}" if last_error else f"saw {describe_nodes(nodes, resource)}"
            raise ClusterError(
                f"timed out after {timeout:g}s waiting for {count} node(s) with >= {gpus_per_node} {resource} "
                f"at {dashboard_url(address)}; {seen}"
            )
        time.sleep(poll)
