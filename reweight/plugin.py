"""What verl's ``verl.plugins`` entry point loads, in every process that imports verl.

verl imports each ``verl.plugins`` entry point at the end of ``import verl`` -- in the driver and in
every Ray worker on every node -- and swallows import errors at DEBUG level. Importing this module
registers the ``reweight`` policy loss in ``verl.trainer.ppo.core_algos.POLICY_LOSS_REGISTRY``.
The loss config's ``_target_`` (``reweight.loss.ReweightPolicyLossConfig``) imports the same module,
so a worker that instantiates the config has the loss even if plugin discovery was turned off
(``VERL_USE_EXTERNAL_PLUGINS=none``).
"""

import reweight.loss  # noqa: F401  (registers loss_mode "reweight")
