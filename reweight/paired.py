"""Paired refills: DAPO's dynamic sampling in complete waves, so that the prompt stream is timing-free.

    reweight-train reweight.paired_refills=true        # sync trainer, algorithm.filter_groups.enable=true

verl 0.9.1's sync ``ReplayBuffer.sample`` polls TransferQueue while groups finish: each filtered group
(all rewards equal) it sees adds two refill credits, refills are dispatched as far as free in-flight slots
allow *at that poll*, and once ``batch_size`` groups are kept it drains the rest and keeps the oldest
``batch_size`` (ties in set order, uids are random). How many prompts a step draws from the dataloader,
and which groups it trains on, therefore depend on which group happened to finish first. Two runs that
should sample the same prompts (arms of a study at one seed, before their policies differ) part at step 1.

:class:`PairedReplayBuffer` makes both choices functions of the groups' *contents* only:

1. wait until no prompt of the step is pending or running (a complete wave);
2. classify every finished group with verl's own DAPO rule and evict the filtered ones (verl's metric
   keys: ``training/filter_groups/evicted_samples``);
3. if at least ``batch_size`` groups are kept, train on the first ``batch_size`` of them in *draw order*
   (the order the trainer took the prompts from the dataloader) and discard the rest as verl does
   (``training/filter_groups/discarded_surplus_samples``);
4. otherwise dispatch the next wave through verl's ``refill_fn``: verl's credit rule (2 per filtered
   group, 1 per failed group that is refilled), at most ``max_inflight_gen_batches x train_batch_size``
   prompts at once (:func:`wave_size`), and go to 1.

The cost: no speculative overlap. verl starts refills while the first wave is still running; here a wave
starts only when the previous one finished, so a step with refills takes one more rollout latency per wave.

The draw order is recorded by the trainer (:func:`reweight.trainers.trainer_class` overrides verl's
``_next_train_batch``) into :class:`DrawOrder`, shared with the buffer. Validation and runs without DAPO
filtering use verl's ``sample`` unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer, _accumulate_eviction_metrics
from verl.utils.skip import SkipManager

logger = logging.getLogger(__name__)


class DrawOrder:
    """uid -> running draw index: the order in which the trainer took prompts from the dataloader."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.next = 0

    def record(self, uids: Iterable[str]) -> None:
        for uid in uids:
            self.index[str(uid)] = self.next
            self.next += 1

    def forget(self, uids: Iterable[str]) -> None:
        for uid in uids:
            self.index.pop(uid, None)

    def sort(self, uids: Iterable[str]) -> list[str]:
        """``uids`` in draw order; a uid never recorded raises (the run would no longer be paired)."""
        uids = list(uids)
        missing = [u for u in uids if u not in self.index]
        if missing:
            raise RuntimeError(
                f"paired refills: {len(missing)} prompt group(s) with no recorded draw order (e.g. {missing[0]}); "
                "prompts reached TransferQueue without the trainer's _next_train_batch"
            )
        return sorted(uids, key=self.index.__getitem__)


def wave_size(credit: int, max_inflight: int, gen_batch_size: int) -> int:
    """Prompts in the next wave: the refill credit, at most ``max_inflight``, in whole ``gen_batch_size`` fetches."""
    n = min(credit, max_inflight)
    return n - n % gen_batch_size


class PairedReplayBuffer(ReplayBuffer):
    """verl's sync ``ReplayBuffer`` whose DAPO sampling works in complete waves (module docstring).

    Build verl's buffer as verl does, then convert it with :meth:`from_buffer` (so its constructor
    arguments stay verl's).
    """

    draw_order: DrawOrder

    @classmethod
    def from_buffer(cls, buffer: ReplayBuffer, draw_order: DrawOrder) -> PairedReplayBuffer:
        if type(buffer) is not ReplayBuffer:
            raise TypeError(f"paired refills wrap verl's sync ReplayBuffer, got {type(buffer).__name__}")
        paired = cls.__new__(cls)
        paired.__dict__.update(buffer.__dict__)
        paired.draw_order = draw_order
        return paired

    @SkipManager.annotate_tq(role="rollout_tq", phase="sample")
    def sample(self, global_steps: int, partition_id: str, batch_size: int):
        if partition_id == "val" or self.filter_groups_metric is None:
            verl_sample = getattr(ReplayBuffer.sample, "__wrapped__", ReplayBuffer.sample)  # skip-decorated once only
            return verl_sample(self, global_steps, partition_id, batch_size)
        return self._sample_in_waves(global_steps, partition_id, batch_size)

    def _wait_for_wave(self, partition_id: str) -> None:
        """Poll until no prompt of the partition is pending or running; the metadata snapshot is then current."""
        import time

        last_debug_time = time.time()
        while True:
            self._sync_metadata_from_transfer_queue()
            if not self.pending_keys[partition_id] and not self.running_keys[partition_id]:
                return
            last_debug_time = self._wait_for_next_poll(partition_id, last_debug_time)

    def _sample_in_waves(self, global_steps: int, partition_id: str, batch_size: int):
        metrics: dict = {}
        max_inflight = self.max_inflight_gen_batches * self.train_batch_size
        credit = 0
        handled: set[str] = set()
        while True:
            self._wait_for_wave(partition_id)
            reasons = self._terminal_eviction_reasons(global_steps, partition_id)
            kept = self._sampleable_terminal_keys(partition_id, reasons)
            failed_count = len(reasons[2])
            evicted, stale_count, dapo_count, evict_metrics = self._evict_terminal_groups(
                global_steps, partition_id, reasons
            )
            handled |= evicted
            if evicted:
                _accumulate_eviction_metrics(metrics, evict_metrics, stale_count)
            if len(kept) >= batch_size:
                break
            credit += 2 * dapo_count + failed_count
            n = wave_size(credit, max_inflight, self.gen_batch_size)
            if n <= 0:
                raise RuntimeError(
                    f"paired refills: {len(kept)} of {batch_size} groups kept and no refill credit left "
                    f"(credit {credit}, max in flight {max_inflight}, gen_batch_size {self.gen_batch_size})"
                )
            self.refill_fn(n)
            credit -= n

        ordered = self.draw_order.sort(kept)
        selected, surplus = ordered[:batch_size], set(ordered[batch_size:])
        rank = {uid: i for i, uid in enumerate(selected)}
        # the batch's rows in draw order too (verl's follow finishing order): group by group, then session, index
        rows = sorted(
            (key for key in self.partitions[partition_id] if key.split("_")[0] in rank),
            key=lambda key: (rank[key.split("_")[0]], *(int(part) for part in key.split("_")[1:])),
        )
        partition_snapshot = {key: self.partitions[partition_id][key] for key in rows}
        if surplus:
            self._clear_groups(partition_id, surplus)
            key = f"{self._metrics_prefix(partition_id)}/filter_groups/discarded_surplus_samples"
            metrics[key] = metrics.get(key, 0) + len(surplus)
        self.draw_order.forget(handled | surplus | set(selected))
        if not partition_snapshot:
            raise RuntimeError("paired refills selected terminal groups with no materializable trajectories")
        return self._materialize_batch(partition_id, selected, partition_snapshot), metrics

