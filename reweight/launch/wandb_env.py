"""The W&B environment of a job: what is forwarded from the submitting shell (the credentials check is in reweight.checks).

verl's ``Tracking`` logger calls ``wandb.init(project=trainer.project_name, name=trainer.experiment_name,
entity=$WANDB_ENTITY, config=<fully resolved config>)``; wandb itself reads the rest from the
environment (``WANDB_MODE``, ``WANDB_API_KEY``, ``WANDB_RUN_GROUP``, ``WANDB_TAGS``, ``WANDB_DIR``...).
So a job's W&B settings travel as environment variables in its Ray runtime_env: taken from the
submitting process's environment at submit time, never written to a file by us.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

# The credentials check is a pre-flight check of the training config (reweight.checks); re-exported here.
from reweight.checks import WandbCredentialsError, check_wandb_credentials, uses_wandb, wandb_mode  # noqa: F401

# Forwarded verbatim from the submitting environment when set.
FORWARDED_VARS = ("WANDB_API_KEY", "WANDB_ENTITY", "WANDB_MODE", "WANDB_PROJECT", "WANDB_BASE_URL", "WANDB_DIR")
MAX_TAG_LENGTH = 64  # W&B rejects longer tags


def clip_tag(tag: str) -> str:
    """A tag W&B accepts (at most 64 characters)."""
    return tag if len(tag) <= MAX_TAG_LENGTH else tag[: MAX_TAG_LENGTH - 1] + "~"


def job_wandb_env(
    environ: Mapping[str, str],
    group: str | None = None,
    tags: Sequence[str] = (),
    wandb_dir: str | os.PathLike | None = None,
) -> dict[str, str]:
    """The W&B variables a job's runtime_env carries: the forwarded ones, plus group / tags / dir if given."""
    env = {name: environ[name] for name in FORWARDED_VARS if environ.get(name)}
    if group:
        env["WANDB_RUN_GROUP"] = group
    if tags:
        cleaned = [clip_tag(t) for t in tags]
        bad = [t for t in cleaned if "," in t]
        if bad:
            raise ValueError(f"W&B tags travel comma-separated in WANDB_TAGS; these contain a comma: {bad}")
        env["WANDB_TAGS"] = ",".join(cleaned)
    if wandb_dir is not None:
        env["WANDB_DIR"] = str(Path(wandb_dir).expanduser().resolve())
    return env
