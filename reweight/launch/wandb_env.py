"""The W&B environment of a job: what is forwarded from the submitting shell, and the credentials check.

verl's ``Tracking`` logger calls ``wandb.init(project=trainer.project_name, name=trainer.experiment_name,
entity=$WANDB_ENTITY, config=<fully resolved config>)``; wandb itself reads the rest from the
environment (``WANDB_MODE``, ``WANDB_API_KEY``, ``WANDB_RUN_GROUP``, ``WANDB_TAGS``, ``WANDB_DIR``...).
So a job's W&B settings travel as environment variables in its Ray runtime_env: taken from the
submitting process's environment at submit time, never written to a file by us.
"""

from __future__ import annotations

import netrc
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlparse

# Forwarded verbatim from the submitting environment when set.
FORWARDED_VARS = ("WANDB_API_KEY", "WANDB_ENTITY", "WANDB_MODE", "WANDB_PROJECT", "WANDB_BASE_URL", "WANDB_DIR")
# wandb modes that need no account.
NO_ACCOUNT_MODES = ("offline", "disabled", "dryrun")
DEFAULT_BASE_URL = "https://api.wandb.ai"
MAX_TAG_LENGTH = 64  # W&B rejects longer tags


class WandbCredentialsError(ValueError):
    """W&B logging requested without credentials and not in an offline/disabled mode."""


def uses_wandb(loggers: Sequence[str] | str | None) -> bool:
    """Whether a ``trainer.logger`` value makes verl call ``wandb.init`` (``tracking`` is its old alias)."""
    if loggers is None:
        return False
    if isinstance(loggers, str):
        loggers = [loggers]
    return any(name in ("wandb", "tracking") for name in loggers)


def wandb_mode(environ: Mapping[str, str]) -> str:
    """The wandb mode the environment selects (``online`` unless WANDB_MODE / WANDB_DISABLED say otherwise)."""
    if environ.get("WANDB_DISABLED", "").strip().lower() in ("1", "true", "yes"):
        return "disabled"
    return environ.get("WANDB_MODE", "").strip().lower() or "online"


def _netrc_has_host(environ: Mapping[str, str]) -> Path | None:
    host = urlparse(environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL).hostname
    home = environ.get("HOME") or os.path.expanduser("~")
    path = Path(environ.get("NETRC") or Path(home) / ".netrc")
    if not path.is_file() or host is None:
        return None
    try:
        return path if netrc.netrc(str(path)).authenticators(host) else None
    except (netrc.NetrcParseError, OSError):
        return None


def check_wandb_credentials(loggers: Sequence[str] | str | None, environ: Mapping[str, str]) -> str | None:
    """Raise :class:`WandbCredentialsError` if wandb would need an account it does not have.

    Returns a note to print when the credentials come from a ``~/.netrc`` entry (every node that runs
    the trainer needs the same file), else None.
    """
    if not uses_wandb(loggers):
        return None
    mode = wandb_mode(environ)
    if mode in NO_ACCOUNT_MODES:
        return None
    if environ.get("WANDB_API_KEY"):
        return None
    found = _netrc_has_host(environ)
    if found is not None:
        return (
            f"W&B credentials come from {found}, not from WANDB_API_KEY: the node that runs the trainer "
            f"needs the same entry (a shared home directory), or export WANDB_API_KEY before submitting."
        )
    raise WandbCredentialsError(
        f"trainer.logger={list(loggers) if not isinstance(loggers, str) else loggers} includes wandb, "
        f"WANDB_MODE is {environ.get('WANDB_MODE') or 'unset'} (online), and no W&B credentials were found "
        f"(no WANDB_API_KEY in the environment, no entry for "
        f"{urlparse(environ.get('WANDB_BASE_URL') or DEFAULT_BASE_URL).hostname} in ~/.netrc). "
        f"Export WANDB_API_KEY (or run `wandb login`), or set WANDB_MODE=offline (runs are written "
        f"locally, `wandb sync` later) or WANDB_MODE=disabled, or drop wandb from trainer.logger."
    )


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
