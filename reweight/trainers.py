"""One trainer subclass carrying whichever of our trainer features a run turns on.

- the direction monitor (``reweight.monitor.freq > 0``, :mod:`reweight.monitor`);
- paired refills (``reweight.paired_refills=true``, :mod:`reweight.paired`).

:func:`reweight_trainer` puts the subclass into verl's ``TRAINER_REGISTRY`` for the run's
``trainer.v1.trainer_mode`` while the task runner runs (:func:`reweight.train.task_runner_class`); with
every feature off nothing is swapped and verl's own trainer runs.
"""

from __future__ import annotations

import contextlib

from omegaconf import DictConfig

from reweight.checks import monitor_freq, paired_refills


def _paired_trainer_class(base: type) -> type:
    from reweight.paired import DrawOrder, PairedReplayBuffer

    class PairedRefills(base):  # type: ignore[misc, valid-type]
        """verl's trainer whose replay buffer samples DAPO's refills in complete waves, in draw order."""

        def _build_replay_buffer(self):
            # called from verl's PPOTrainer.__init__, before anything else of ours exists
            self.draw_order = DrawOrder()
            return PairedReplayBuffer.from_buffer(super()._build_replay_buffer(), self.draw_order)

        def _next_train_batch(self, num_prompts=None):
            batch = super()._next_train_batch(num_prompts)
            self.draw_order.record(batch["uid"])
            return batch

    PairedRefills.__name__ = PairedRefills.__qualname__ = f"PairedRefills{base.__name__}"
    return PairedRefills


def trainer_class(base: type, config: DictConfig) -> type:
    """``base`` with the features ``config`` turns on (``base`` itself when none is on)."""
    cls = base
    if monitor_freq(config) > 0:
        from reweight.monitor import monitored_trainer_class

        cls = monitored_trainer_class(cls)
    if paired_refills(config):
        cls = _paired_trainer_class(cls)
    return cls


@contextlib.contextmanager
def reweight_trainer(config: DictConfig):
    """While the block runs, verl's ``TRAINER_REGISTRY`` gives the run's trainer mode :func:`trainer_class`
    (nothing changes when every feature is off). Used in the task runner's process only."""
    from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY

    mode = config.trainer.v1.trainer_mode
    base = TRAINER_REGISTRY[mode]
    cls = trainer_class(base, config)
    if cls is base:
        yield
        return
    TRAINER_REGISTRY[mode] = cls
    try:
        yield
    finally:
        TRAINER_REGISTRY[mode] = base
