"""One mechanism for every console script: bad input is one line on stderr and exit status 2.

    def main(argv=None) -> int:
        return run_cli("reweight-eval", lambda: _main(argv))

``run_cli`` runs the command; an exception of a *user-error* class (bad input: a missing file, a bad value,
a Hydra override that does not compose) becomes ``<prog>: error: <message>`` on stderr and exit status 2,
with no traceback. Any other exception is a bug and propagates with its traceback. With
``REWEIGHT_DEBUG=1`` the full traceback of a user error is printed too (then the same line, status 2).
Messages name the key or file and the value (``data.train_files='/x.parquet': file not found``); a
multi-line message (Hydra's) is joined into one line.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Callable
from typing import TextIO

DEBUG_ENV = "REWEIGHT_DEBUG"
EXIT_USAGE = 2


class UsageError(ValueError):
    """Bad input, already worded for the user (names the key or file and the value)."""


def debug_enabled(environ: dict[str, str] | None = None) -> bool:
    """Whether ``REWEIGHT_DEBUG`` asks for full tracebacks (any value but empty/0/false/no)."""
    value = (os.environ if environ is None else environ).get(DEBUG_ENV, "")
    return value.strip().lower() not in ("", "0", "false", "no")


def user_errors(extra: tuple[type[BaseException], ...] = ()) -> tuple[type[BaseException], ...]:
    """The exception classes that mean bad input: ValueError (incl. ours), missing files, Hydra/OmegaConf."""
    classes: list[type[BaseException]] = [ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, KeyError]
    try:  # composing a Hydra config: unknown keys, bad override syntax, missing config names
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        classes += [HydraException, OmegaConfBaseException]
    except ImportError:  # pragma: no cover - both ship with verl
        pass
    return (*classes, *extra)


def one_line(error: BaseException | str) -> str:
    """The message of ``error`` on one line (a KeyError's key unquoted-repr'd, lines joined with '; ')."""
    if isinstance(error, BaseException):
        text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
        if not text:
            text = type(error).__name__
    else:
        text = error
    parts = [p.strip() for p in re.split(r"\s*\n\s*", text.strip()) if p.strip()]
    line = parts[0] if parts else ""
    for part in parts[1:]:
        line += (" " if line.endswith((".", ":", ";", ",")) else "; ") + part
    return line


def report(prog: str, error: BaseException | str, stream: TextIO | None = None) -> int:
    """Print ``<prog>: error: <message>`` to stderr; return the usage exit status (2)."""
    print(f"{prog}: error: {one_line(error)}", file=stream or sys.stderr, flush=True)
    return EXIT_USAGE


def run_cli(prog: str, body: Callable[[], int | None], errors: tuple[type[BaseException], ...] | None = None) -> int:
    """Run ``body``; a user error becomes one line and status 2 (traceback too under ``REWEIGHT_DEBUG=1``)."""
    errors = user_errors() if errors is None else errors
    try:
        return int(body() or 0)
    except errors as e:
        if debug_enabled():
            traceback.print_exc()
        return report(prog, e)
