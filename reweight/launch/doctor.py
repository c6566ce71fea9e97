"""``reweight-launch doctor``: is this node, or this Ray cluster, ready for a training config? One table.

Run it before the first job, on a GPU node or against a cluster (``--address``). It gathers facts on every
node (a task pinned to each node, as the loss probe does; without a cluster, on this node only) and checks
them against the training config, composed as ``reweight-train`` composes it:

==================  =======================================================================================
check               passes when
==================  =======================================================================================
cuda                every node sees a CUDA device; reports device, driver and NCCL versions
versions            torch / vLLM / transformers / verl on every node are the pins of the GPU install: verl's
                    ``vllm`` extra (torch, vllm, transformers) and our ``verl`` pin, read from the installed
                    packages' metadata (the same pins ``launch/constraints/gpu.txt`` resolves)
attention           flash-attn on every node, or the config runs on the sdpa fallback
                    (:func:`reweight.attention.check_attention`: no Ulysses SP, no megatron)
cluster             the nodes and their GPUs cover ``trainer.nnodes`` x ``trainer.n_gpus_per_node``
loss                ``loss_mode=reweight`` is registered in a worker process on every node (the probe's check)
paths               ``trainer.default_local_dir`` writable and the data files readable on every node
wandb               W&B credentials, when ``trainer.logger`` asks for wandb
                    (:func:`reweight.checks.check_wandb_credentials`)
gpu_memory          every GPU's free memory covers ``actor_rollout_ref.rollout.gpu_memory_utilization`` of it
                    (vLLM refuses to start otherwise)
==================  =======================================================================================

Each check is a pure function of the gathered facts (:class:`NodeFacts`), so each is tested with fakes.
The command exits 0 only when every check passes.
"""

from __future__ import annotations

import copy
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

VERL = "verl"
OURS = "verl-reweight"
STACK = ("torch", "vllm", "transformers")  # pinned by verl's vllm extra


@dataclass
class NodeFacts:
    """What one node reports (gathered by :func:`gather_node_facts` in a worker process on that node)."""

    host: str
    cuda_devices: list[str] = field(default_factory=list)  # torch.cuda.get_device_name(i), one per visible GPU
    driver: str | None = None  # NVIDIA driver version
    nccl: str | None = None  # torch.cuda.nccl.version()
    versions: dict[str, str | None] = field(default_factory=dict)  # distribution -> installed version (None: missing)
    flash_attn: bool = False
    gpu_memory: list[tuple[int, int]] = field(default_factory=list)  # (free, total) bytes per GPU
    paths: dict[str, str | None] = field(default_factory=dict)  # path -> problem (None: fine)
    loss_registered: bool = False
    ray_gpus: float | None = None  # the node's GPU resource as Ray sees it (None: no Ray cluster)
    node_id: str | None = None  # Ray's node id (None: no Ray cluster)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


# ---------------------------------------------------------------------------------------------- pins


def stack_pins() -> dict[str, str]:
    """{distribution: exact version} the GPU install pins: verl's ``vllm`` extra's ``==`` pins of torch, vllm and
    transformers, and our ``verl`` pin, read from the installed metadata (nothing restated here)."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement

    pins: dict[str, str] = {}

    def exact(line: str, extra: str) -> tuple[str, str] | None:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            return None
        specs = list(req.specifier)
        if len(specs) == 1 and specs[0].operator == "==":
            return req.name.lower(), specs[0].version
        return None

    try:
        for line in requires(OURS) or []:
            if (pin := exact(line, "")) and pin[0] == VERL:
                pins[VERL] = pin[1]
        for line in requires(VERL) or []:
            if (pin := exact(line, "vllm")) and pin[0] in STACK:
                pins[pin[0]] = pin[1]
    except PackageNotFoundError:  # pragma: no cover - we and verl are installed wherever this runs
        pass
    return pins


# ---------------------------------------------------------------------------------------------- facts


def _installed(names: Sequence[str]) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def path_problem(path: str, write: bool) -> str | None:
    """Why ``path`` cannot be used on this node (None if it can): a readable file, or a directory we can write in."""
    path = os.path.expanduser(path)
    if write:
        target = path
        while not os.path.exists(target) and os.path.dirname(target) != target:
            target = os.path.dirname(target)  # the directory the run would create it in
        probe = os.path.join(target, f".reweight-doctor-{os.getpid()}")
        try:
            with open(probe, "w") as f:
                f.write("ok")
            os.remove(probe)
        except OSError as e:
            return f"not writable ({e.strerror})"
        return None
    try:
        if os.path.isdir(path):
            os.listdir(path)  # a directory of parquet files
        else:
            with open(path, "rb") as f:
                f.read(1)
    except OSError as e:
        return f"not readable ({e.strerror})"
    return None


def gather_node_facts(paths: Mapping[str, bool]) -> NodeFacts:
    """This node's facts; ``paths``: path -> whether it must be writable (else readable)."""
    from reweight.attention import flash_attn_available

    facts = NodeFacts(host=socket.gethostname(), versions=_installed((VERL, *STACK)), flash_attn=flash_attn_available())
    facts.paths = {p: path_problem(p, write) for p, write in paths.items()}
    try:
        import verl  # noqa: F401  (loads the verl.plugins entry points)
        from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY

        facts.loss_registered = "reweight" in POLICY_LOSS_REGISTRY
    except ImportError:
        facts.loss_registered = False
    import torch

    if torch.cuda.is_available():
        facts.cuda_devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        facts.gpu_memory = [tuple(torch.cuda.mem_get_info(i)) for i in range(torch.cuda.device_count())]
        facts.nccl = ".".join(map(str, torch.cuda.nccl.version()))
        try:
            import pynvml  # nvidia-ml-py, a vLLM dependency

            pynvml.nvmlInit()
            facts.driver = str(pynvml.nvmlSystemGetDriverVersion())
        except Exception:  # noqa: BLE001 - no NVML: the driver is then reported unknown
            facts.driver = None
    return facts


# ---------------------------------------------------------------------------------------------- checks


def _hosts(nodes: Sequence[NodeFacts]) -> str:
    return ", ".join(n.host for n in nodes)


def check_cuda(nodes: Sequence[NodeFacts]) -> Check:
    missing = [n for n in nodes if not n.cuda_devices]
    if missing:
        return Check("cuda", False, f"no CUDA device visible on {_hosts(missing)}")
    first = nodes[0]
    kinds = sorted({d for n in nodes for d in n.cuda_devices})
    return Check("cuda", True, f"{sum(len(n.cuda_devices) for n in nodes)} x {' / '.join(kinds)}; "
                               f"driver {first.driver or 'unknown'}, NCCL {first.nccl or 'unknown'}")


def check_versions(nodes: Sequence[NodeFacts], pins: Mapping[str, str]) -> Check:
    from packaging.specifiers import SpecifierSet

    wrong = []
    for n in nodes:
        for name, pin in sorted(pins.items()):
            have = n.versions.get(name)
            if have is None or not SpecifierSet(f"=={pin}").contains(have, prereleases=True):  # 2.11.0+cu130 is ==2.11.0
                wrong.append(f"{n.host}: {name} {have or 'missing'} (pinned {pin})")
    if wrong:
        return Check("versions", False, "; ".join(wrong) + " -- reinstall with launch/constraints/gpu.txt (docs/gpu.md)")
    return Check("versions", True, ", ".join(f"{k} {v}" for k, v in sorted(pins.items())) + " on every node")


def check_attention_backend(nodes: Sequence[NodeFacts], cfg: Any) -> Check:
    from reweight.attention import ATTN_KEY, check_attention
    from reweight.checks import ConfigError

    without = [n for n in nodes if not n.flash_attn]
    if not without:
        return Check("attention", True, "flash-attn on every node")
    if len(without) < len(nodes):
        return Check("attention", False, f"flash-attn on some nodes only (missing on {_hosts(without)}): the driver's "
                                         f"choice must hold on every worker; install it everywhere or nowhere")
    try:
        check_attention(copy.deepcopy(cfg), cpu=False, flash_attn=False)
    except ConfigError as e:
        return Check("attention", False, str(e))
    return Check("attention", True, f"no flash-attn: sdpa fallback ({ATTN_KEY}=sdpa), slower, supported by this config")


def check_cluster(nodes: Sequence[NodeFacts], nnodes: int, gpus_per_node: int) -> Check:
    """verl asks Ray for ``nnodes`` x ``n_gpus_per_node`` GPUs (a placement group of that many bundles)."""
    gpus = [int(n.ray_gpus) if n.ray_gpus is not None else len(n.cuda_devices) for n in nodes]
    enough = sum(1 for g in gpus if g >= gpus_per_node)
    listing = ", ".join(f"{n.host}: {g}" for n, g in zip(nodes, gpus))
    want = f"trainer.nnodes x trainer.n_gpus_per_node = {nnodes} x {gpus_per_node}"
    if enough < nnodes:
        return Check("cluster", False, f"{want}, but {enough} node(s) have {gpus_per_node} GPUs ({listing})")
    return Check("cluster", True, f"{want}; GPUs per node: {listing}")


def check_loss(nodes: Sequence[NodeFacts]) -> Check:
    missing = [n for n in nodes if not n.loss_registered]
    if missing:
        return Check("loss", False, f"loss_mode reweight not registered in a worker on {_hosts(missing)} "
                                    f"(install verl-reweight there: launch/README.md)")
    where = f"in a Ray worker on {len(nodes)} node(s)" if all(n.node_id for n in nodes) else "in this process"
    return Check("loss", True, f"loss_mode reweight registered {where}")


def check_paths(nodes: Sequence[NodeFacts], skipped: Sequence[str] = ()) -> Check:
    problems = [f"{n.host}: {p} {why}" for n in nodes for p, why in n.paths.items() if why]
    if problems:
        return Check("paths", False, "; ".join(problems))
    checked = sorted({p for n in nodes for p in n.paths})
    detail = f"{len(checked)} path(s) fine on every node" + (f"; not local, not checked: {', '.join(skipped)}" if skipped else "")
    return Check("paths", True, detail)


def check_wandb(loggers: Any, environ: Mapping[str, str]) -> Check:
    from reweight.checks import WandbCredentialsError, check_wandb_credentials, uses_wandb

    try:
        note = check_wandb_credentials(loggers, environ)
    except WandbCredentialsError as e:
        return Check("wandb", False, str(e))
    if not uses_wandb(loggers):
        return Check("wandb", True, "trainer.logger does not use wandb")
    return Check("wandb", True, note or "credentials found (WANDB_API_KEY or a no-account WANDB_MODE)")


def check_gpu_memory(nodes: Sequence[NodeFacts], utilization: float) -> Check:
    """vLLM takes ``gpu_memory_utilization`` of each GPU's total memory and refuses to start with less free."""
    low = [f"{n.host} GPU{i}: {free / 2**30:.1f} of {total / 2**30:.1f} GiB free"
           for n in nodes for i, (free, total) in enumerate(n.gpu_memory) if free < utilization * total]
    if low:
        return Check("gpu_memory", False, f"rollout.gpu_memory_utilization={utilization} needs more free memory: "
                                          + "; ".join(low))
    if not any(n.gpu_memory for n in nodes):
        return Check("gpu_memory", False, "no GPU memory to check (no CUDA device)")
    least = min(free / total for n in nodes for free, total in n.gpu_memory)
    return Check("gpu_memory", True, f"least free {least:.0%} >= rollout.gpu_memory_utilization={utilization}")


# ---------------------------------------------------------------------------------------------- run


def run_paths(cfg: Any) -> tuple[dict[str, bool], list[str]]:
    """The paths a run uses on its nodes (path -> must be writable) and the non-local ones left unchecked."""
    from omegaconf import OmegaConf

    from reweight.checks import DATA_KEYS, _as_list, _is_uri

    paths: dict[str, bool] = {}
    skipped: list[str] = []
    wanted = [(OmegaConf.select(cfg, "trainer.default_local_dir", default=None), True)]
    wanted += [(f, False) for key in DATA_KEYS for f in _as_list(OmegaConf.select(cfg, key, default=None))]
    for value, write in wanted:
        if not value:
            continue
        if _is_uri(str(value)):  # hdfs://, embedded://...: not a path of the node
            skipped.append(str(value))
        else:
            paths[str(value)] = write
    return paths, skipped


def run_checks(cfg: Any, nodes: Sequence[NodeFacts], environ: Mapping[str, str], pins: Mapping[str, str],
               skipped: Sequence[str] = ()) -> list[Check]:
    """Every check of the table, in order, for ``cfg`` against the gathered ``nodes``."""
    from omegaconf import OmegaConf

    return [
        check_cuda(nodes),
        check_versions(nodes, pins),
        check_attention_backend(nodes, cfg),
        check_cluster(nodes, int(cfg.trainer.nnodes), int(cfg.trainer.n_gpus_per_node)),
        check_loss(nodes),
        check_paths(nodes, skipped),
        check_wandb(OmegaConf.select(cfg, "trainer.logger", default=None), environ),
        check_gpu_memory(nodes, float(OmegaConf.select(cfg, "actor_rollout_ref.rollout.gpu_memory_utilization"))),
    ]


def gather(paths: Mapping[str, bool], address: str | None) -> list[NodeFacts]:
    """Facts of every node of the Ray cluster at ``address`` (a worker on each), or of this node alone."""
    if not address:
        return [gather_node_facts(paths)]
    import ray

    from reweight.launch.probe import on_every_node

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    gpus = {n["NodeID"]: n.get("Resources", {}).get("GPU", 0.0) for n in ray.nodes() if n.get("Alive")}
    facts = on_every_node(_facts_in_worker, 1, args=(dict(paths),))
    for f in facts:
        f.ray_gpus = gpus.get(f.node_id, 0.0)
    return facts


def _facts_in_worker(paths: dict[str, bool]) -> NodeFacts:
    import ray

    facts = gather_node_facts(paths)
    facts.node_id = ray.get_runtime_context().get_node_id()
    return facts


def format_table(checks: Sequence[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{'check'.ljust(width)}  status  detail", f"{'-' * width}  ------  ------"]
    lines += [f"{c.name.ljust(width)}  {'ok' if c.ok else 'FAIL':<6}  {c.detail}" for c in checks]
    failed = [c.name for c in checks if not c.ok]
    lines.append(f"{len(checks) - len(failed)}/{len(checks)} checks passed" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return "\n".join(lines)


def doctor(config_name: str | None, overrides: Sequence[str], address: str | None,
           environ: Mapping[str, str] | None = None) -> tuple[bool, str]:
    """Compose the config, gather every node's facts, run every check: (all passed, the table)."""
    from reweight.launch.submit import compose

    cfg = compose(config_name, overrides)
    paths, skipped = run_paths(cfg)
    checks = run_checks(cfg, gather(paths, address), os.environ if environ is None else environ, stack_pins(), skipped)
    return all(c.ok for c in checks), format_table(checks)
