"""The live direction monitor: Δlog p against the base model, every ``reweight.monitor.freq`` steps.

    reweight-train reweight.monitor.freq=10        # every 10th step (0 = off)

On a monitored step, after verl computed the step's ``old_log_prob`` and advantages, the actor workers
run one more forward of the same batch, with the *initial* weights, through the actor's own engine
(same micro-batching, precision, kernels and temperature), and the driver logs the statistics of
Δlog p = log π_old − log π_base (:mod:`reweight.direction`) under ``direction/`` through verl's tracker,
and W&B histograms of Δlog p, p and w. docs/monitor.md explains each key and how to read them.

Why the initial weights in the actor rather than verl's reference worker: verl builds a reference
worker only with a KL term (``need_reference_policy``) and then runs it on every step; making it
conditional would need a role remapping plus the reference's own engine settings (its dtype and
micro-batches differ from the actor's, so step 1 would not give exactly 0), and on the CPU backend
verl's reference is built with ``CPUOffloadPolicy(pin_memory=True)``, which fails without an
accelerator. Keeping each rank's *shard* of the initial parameters in host memory costs one shard per
rank (the model's size divided by the data-parallel size), no accelerator memory, and on a monitored
step three copies of that shard (save current, load base, restore). The snapshot is taken when the
actor is built, before verl loads a checkpoint, so a resumed run still compares against
``actor_rollout_ref.model.path``.

The glue: :func:`monitored_trainer_class` subclasses verl's trainer class for the run's
``trainer.v1.trainer_mode``; :func:`reweight.trainers.reweight_trainer` puts it (with our other trainer
features) into verl's ``TRAINER_REGISTRY`` while the task runner runs; that subclass maps the actor role to
:class:`MonitoredActorWorker` and adds the monitored forward after verl's advantage step.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from reweight.checks import monitor_freq, uses_wandb
from reweight.configs import POLICY_LOSS_KEY
from reweight.direction import direction_stats, histograms

DIRECTION_TIMER = "direction"  # verl's timing key: ``timing_s/direction`` on monitored steps


# ------------------------------------------------------------------------------------------ steps


def is_monitored(step: int, freq: int) -> bool:
    """Steps 1, 1 + freq, 1 + 2·freq, ...: the first step (Δlog p = 0, a check of the monitor) and every freq-th after."""
    return freq > 0 and (step - 1) % freq == 0


# ------------------------------------------------------------------------------------------ worker side


def _fsdp_roots(module: torch.nn.Module) -> tuple[int, list]:
    """(FSDP version, the modules to reshard): FSDP1 handles, FSDP2 ``FSDPModule``s, or (0, []) for a plain module."""
    from verl.utils.fsdp_utils import FSDP, FSDPModule, fsdp_version

    version = fsdp_version(module)
    if version == 1:
        return 1, [m._handle for m in FSDP.fsdp_modules(module) if m._handle is not None]
    if version == 2 or any(isinstance(m, FSDPModule) for m in module.modules()):
        return 2, [m for m in module.modules() if isinstance(m, FSDPModule)]
    return 0, []


def _reshard(module: torch.nn.Module) -> None:
    """Free every gathered copy of the parameters (verl's own calls, on every FSDP unit, not only the root):
    a forward of non-resharded units would otherwise reuse weights gathered before a swap."""
    version, units = _fsdp_roots(module)
    for unit in units:
        if version == 1:
            if unit.uses_sharded_strategy:
                unit.reshard(True)
        else:
            unit.reshard()


def local_tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    """The tensors holding this rank's share of the parameters, in a fixed order (call after :func:`_reshard`):
    FSDP1 flat parameters, the local shards of FSDP2's DTensors, or a plain module's parameters."""
    version, units = _fsdp_roots(module)
    if version == 1:
        return [unit.flat_param.data for unit in units]
    out = []
    for p in module.parameters():
        local = getattr(p, "_local_tensor", None)
        out.append(local if local is not None else p.data)
    return out


class BaseWeights:
    """A host-memory copy of a module's local parameter shard, swapped in for a forward and swapped out after."""

    def __init__(self, module: torch.nn.Module):
        _reshard(module)
        self.saved = [t.detach().to("cpu", copy=True) for t in local_tensors(module)]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.saved)

    @contextlib.contextmanager
    @torch.no_grad()
    def swapped_in(self, module: torch.nn.Module):
        """Within the block the module computes with the saved weights; its own are restored on exit (also on error)."""
        _reshard(module)
        tensors = local_tensors(module)
        if [t.shape for t in tensors] != [t.shape for t in self.saved]:
            raise RuntimeError("the module's parameter shards changed shape since the base weights were saved")
        current = [t.detach().to("cpu", copy=True) for t in tensors]
        for t, saved in zip(tensors, self.saved):
            t.copy_(saved)
        try:
            yield
        finally:
            _reshard(module)
            for t, kept in zip(local_tensors(module), current):
                t.copy_(kept)


def _monitored_worker_class():
    from verl.single_controller.base.decorator import Dispatch, make_nd_compute_dataproto_dispatch_fn, register
    from verl.workers.engine_workers import ActorRolloutRefWorker

    class MonitoredActorWorker(ActorRolloutRefWorker):
        """verl's actor/rollout worker that keeps its initial weights (host memory) for the monitor."""

        @register(dispatch_mode=Dispatch.ONE_TO_ALL)
        def init_model(self):
            super().init_model()
            self.base_weights = BaseWeights(self.actor.engine.module) if self.actor is not None else None

        @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
        def compute_base_log_prob(self, data):
            """verl's ``compute_log_prob`` with the initial weights swapped in (output field ``log_probs``)."""
            with self.base_weights.swapped_in(self.actor.engine.module):
                output = self.actor.infer_batch(data)
            return output.cpu() if output is not None else None

    MonitoredActorWorker.__module__ = __name__
    return MonitoredActorWorker


_WORKER = None


def monitored_worker_class():
    """:class:`MonitoredActorWorker` (built on first use, so that importing this module does not import verl's workers)."""
    global _WORKER
    if _WORKER is None:
        _WORKER = _monitored_worker_class()
    return _WORKER


# ------------------------------------------------------------------------------------------ driver side


def loss_weight_settings(cfg: DictConfig) -> tuple[str, float, str] | None:
    """(scheme, alpha, apply_to) of our loss, or None when there is no w(p) to correlate with Δlog p.

    None when another loss is in use, or for the entropy schemes (``forking``, ``entropy_bonus``), whose
    weight depends on the policy's entropy and the global batch rather than on p alone.
    """
    from reweight.loss import LOSS_MODE
    from reweight.weights import PROB_SCHEMES

    policy_loss = OmegaConf.select(cfg, POLICY_LOSS_KEY, default=None)
    if policy_loss is None or policy_loss.get("loss_mode") != LOSS_MODE:
        return None
    if str(policy_loss.scheme) not in PROB_SCHEMES:
        return None
    return str(policy_loss.scheme), float(policy_loss.alpha), str(policy_loss.get("apply_to", "all") or "all")


def batch_direction(
    old_log_prob: torch.Tensor,
    base_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    weight_settings: tuple[str, float, str] | None,
) -> tuple[dict[str, float], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The ``direction/`` scalars and histograms of one batch, all ``(batch, response_len)`` tensors.

    w comes from :mod:`reweight.weights` applied to p = exp(old_log_prob) (the rollout policy's
    probability, as the loss computes it with ``prob_source=old``), selected by the advantage's sign.
    """
    from reweight.weights import select_by_sign, token_weights

    old, base = old_log_prob.double(), base_log_prob.double()
    delta = (old - base).numpy()
    prob = old.exp()
    weights = None
    if weight_settings is not None:
        scheme, alpha, apply_to = weight_settings
        weights = select_by_sign(token_weights(prob, scheme, alpha), advantages, apply_to).numpy()
    m, adv = mask.bool().numpy(), advantages.double().numpy()
    return direction_stats(delta, m, adv, weights), histograms(delta, prob.numpy(), m, weights)


def wandb_histograms(hists: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    import wandb

    return {key: wandb.Histogram(np_histogram=(counts, edges)) for key, (counts, edges) in hists.items()}


def monitored_trainer_class(base: type) -> type:
    import ray
    import transfer_queue as tq
    from verl.trainer.ppo.utils import Role
    from verl.utils.debug import marked_timer
    from verl.workers.utils.padding import response_from_nested

    class DirectionMonitored(base):  # type: ignore[misc, valid-type]
        """verl's trainer plus the direction monitor on every ``reweight.monitor.freq``-th step."""

        def _init_resource_pool_mgr(self):
            super()._init_resource_pool_mgr()
            worker = ray.remote(monitored_worker_class())
            for role in (Role.ActorRollout, Role.ActorRolloutRef, Role.Actor):
                if role in self.role_worker_mapping:
                    self.role_worker_mapping[role] = worker

        def _compute_advantage(self, batch, metrics):
            batch = super()._compute_advantage(batch, metrics)
            if is_monitored(self.global_steps, monitor_freq(self.config)):
                with marked_timer(DIRECTION_TIMER, self.timing_raw, color="purple"):
                    self._monitor_direction(batch, metrics)
            return batch

        def _monitor_direction(self, batch, metrics):
            batch.extra_info.update(
                {"calculate_entropy": False, "compute_loss": False,
                 "temperature": self.config.actor_rollout_ref.rollout.temperature}
            )  # fmt: skip
            output = self.actor_rollout_wg.compute_base_log_prob(batch)
            assert len(output) == len(batch)
            fields = ["log_probs", "response_mask", "old_log_probs", "advantages"]
            data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
            data["base_log_probs"] = response_from_nested(data.pop("log_probs"), data["response_mask"])
            data = data.to_padded_tensor()
            rows = torch.tensor([not tag.get("is_padding", False) for tag in batch.tags], dtype=torch.bool)
            mask = data["response_mask"].bool() & rows[:, None]
            scalars, hists = batch_direction(
                data["old_log_probs"].float(), data["base_log_probs"].float(), data["advantages"].float(), mask,
                loss_weight_settings(self.config),
            )  # fmt: skip
            metrics.update(scalars)
            if uses_wandb(self.config.trainer.get("logger")):
                # verl's tracker: logged to W&B only (the console and file loggers take scalars), at this step
                self.logger.log(data=wandb_histograms(hists), step=self.global_steps, backend=["wandb"])

    DirectionMonitored.__name__ = DirectionMonitored.__qualname__ = f"DirectionMonitored{base.__name__}"
    return DirectionMonitored


def histogram_note(cfg: DictConfig, records: list[dict]) -> str | None:
    """The end-of-run summary's line on the monitor: monitored steps and where their histograms are (None when off)."""
    import os
    from pathlib import Path

    from reweight.direction import HIST_KEYS

    if monitor_freq(cfg) == 0:
        return None
    steps = sorted({int(r["step"]) for r in records if "direction/logp_diff_mean" in (r.get("data") or {})})
    if not steps:
        return f"no monitored step in this run (reweight.monitor.freq={monitor_freq(cfg)})"
    shown = ",".join(map(str, steps[:6])) + (",..." if len(steps) > 6 else "")
    line = f"Δlog p at steps {shown} (direction/ in the metrics)"
    if not uses_wandb(cfg.trainer.get("logger")):
        return line + "; histograms need W&B (add wandb to trainer.logger)"
    keys = "{" + ",".join(k.rsplit("/", 1)[1] for k in HIST_KEYS.values()) + "}"
    run_id = OmegaConf.select(cfg, "ray_kwargs.ray_init.runtime_env.env_vars.WANDB_RUN_ID", default=None)
    where = f"W&B run {run_id}" if run_id else "the W&B run"
    wandb_dir = os.environ.get("WANDB_DIR")
    if wandb_dir and run_id:
        found = sorted(Path(wandb_dir).glob(f"**/*run-*-{run_id}"))
        if found:
            where += f" ({found[-1]})"
    return line + f"; histograms direction/hist/{keys} in {where}"
