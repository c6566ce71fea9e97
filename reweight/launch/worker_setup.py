"""Ray ``worker_process_setup_hook`` for jobs that run ``reweight-train``.

:mod:`reweight.launch.submit` puts ``reweight.launch.worker_setup.register_reweight`` in every job's
runtime_env, so every Ray worker process the job starts, on every node, runs it before any task or
actor: our policy loss is registered even where verl's ``verl.plugins`` entry-point discovery is off
(``VERL_USE_EXTERNAL_PLUGINS=none``) or the package was shipped with ``py_modules`` (no
distribution metadata, so no entry point). A node that cannot import ``reweight`` fails the worker
loudly here instead of failing minutes later on an unknown ``loss_mode``. It is also the only mechanism
for job processes that are not ``reweight-train`` (``reweight-launch probe``). docs/architecture.md
says which mechanism is relied on where.
"""

from __future__ import annotations

HOOK = "reweight.launch.worker_setup.register_reweight"


def register_reweight() -> None:
    """Import :mod:`reweight.plugin`, which registers loss_mode ``reweight`` in verl."""
    import reweight.plugin  # noqa: F401
