"""What verl's ``verl.plugins`` entry point loads, in every process that imports verl.

verl imports each ``verl.plugins`` entry point at the end of ``import verl`` -- in the driver and in
every Ray worker on every node -- and swallows import errors at DEBUG level. Importing this module

- registers the ``reweight`` policy loss in ``verl.trainer.ppo.core_algos.POLICY_LOSS_REGISTRY``;
- arms :mod:`reweight.actor_hook`, the patch that gives that loss the entropy and global-batch values of
  ``scheme=forking`` / ``entropy_bonus`` and ``unit_mean`` (it acts only when the reweight loss is in use);
- installs the CPU backend (:mod:`reweight.cpu`): verl platform ``cpu``, selected by
  ``VERL_PLATFORM=cpu`` or when no accelerator is present, plus its version-checked patches.
  A failure there is logged at ERROR (verl would hide it) and raised again by
  ``reweight.cpu.check()``, which ``reweight-train`` calls before Ray starts.

The entry point is what reaches every process; because it fails silently, ``reweight-train`` also names
this module in ``VERL_USE_EXTERNAL_MODULES`` for its workers, and jobs that ``reweight-launch`` submits
import it through Ray's ``worker_process_setup_hook`` (:mod:`reweight.launch.worker_setup`). Which one
is relied on where, and the tests that show why: docs/architecture.md.
"""

import logging

import reweight.loss  # noqa: F401  (registers loss_mode "reweight")

try:
    import reweight.actor_hook

    reweight.actor_hook.install()
except Exception as _e:  # the schemes that need it then refuse to run, naming the cause
    logging.getLogger("reweight.actor_hook").error("reweight actor hook not installed: %s", _e)

try:
    import reweight.cpu

    reweight.cpu.install()
except Exception as _e:  # verl swallows plugin errors at DEBUG: say it loudly, the driver re-raises
    logging.getLogger("reweight.cpu").error("reweight CPU backend not installed: %s", _e)
