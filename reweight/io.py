"""Atomic file writes: write a temporary sibling, fsync it, then ``os.replace`` it onto the target.

A reader (or a resumed run) therefore sees either the old file (or none) or the complete new one,
never a partial write. Everything goes through :func:`atomic_write`; the helpers only supply the
function that writes the temporary:

- :func:`write_text_atomic` – a string (UTF-8), optionally with permission bits (``mode=0o755``);
- :func:`write_json_atomic` – ``json.dumps(obj, **json_kwargs)`` plus a trailing newline;
- :func:`write_parquet_atomic` – a pyarrow ``Table`` or a pandas ``DataFrame``;
- :func:`save_figure_atomic` – a matplotlib figure (the temporary keeps the target's suffix, so
  ``savefig`` infers the format from it).

The temporary is created with :func:`tempfile.mkstemp` in the target's directory (``os.replace``
cannot cross file systems; a unique name means concurrent writers of the same target never write
into each other's temporary, and the last ``os.replace`` wins). It is named
``.<target name>.<random><suffix>`` (a hidden file) and is removed if anything fails, including
``KeyboardInterrupt``. Without ``mode``, the written file gets the usual permissions of a new file
(``0o666`` less the umask), not the ``0o600`` that ``mkstemp`` creates.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

__all__ = ["atomic_write", "save_figure_atomic", "write_json_atomic", "write_parquet_atomic", "write_text_atomic"]


def _umask() -> int:
    """The process umask, read without changing it where the platform allows (Linux ``/proc``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no other portable way to read it: set and restore
    os.umask(mask)
    return mask


def atomic_write(
    path: str | os.PathLike, write: Callable[[Path], None], *, suffix: str = ".tmp", mode: int | None = None
) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, fsync it, then ``os.replace`` it onto ``path``.

    ``write`` receives the temporary's path (an existing, empty file that it may overwrite).
    ``path``'s parent directories are created. ``suffix`` ends the temporary's name (pass the
    target's suffix when ``write`` infers a format from it). ``mode`` sets the permission bits of
    the written file; by default they are those of a newly created file. On any exception the
    temporary is removed, ``path`` is left as it was, and the exception propagates.
    Returns ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    tmp = Path(name)
    try:
        os.close(fd)
        write(tmp)
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, (0o666 & ~_umask()) if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str, mode: int | None = None) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; ``mode`` sets the permission bits (e.g. ``0o755``)."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write, mode=mode)


def write_json_atomic(path: str | os.PathLike, obj: Any, **json_kwargs: Any) -> Path:
    """Write ``json.dumps(obj, **json_kwargs)`` and a newline to ``path`` atomically.

    The formatting is the caller's: e.g. ``indent=2, allow_nan=False`` (a ``ValueError`` on NaN
    is raised before anything is written).
    """
    return write_text_atomic(path, json.dumps(obj, **json_kwargs) + "\n")


def write_parquet_atomic(path: str | os.PathLike, data: Any, **kwargs: Any) -> Path:
    """Write a pyarrow ``Table`` (``pq.write_table``) or a pandas ``DataFrame`` to ``path`` atomically.

    A DataFrame is written with ``to_parquet(..., index=False)`` unless ``kwargs`` says otherwise;
    ``kwargs`` go to the writer.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(data, pa.Table):
        return atomic_write(path, lambda tmp: pq.write_table(data, tmp, **kwargs))
    if not hasattr(data, "to_parquet"):
        raise TypeError(f"write_parquet_atomic: expected a pyarrow Table or a pandas DataFrame, got {type(data).__name__}")
    return atomic_write(path, lambda tmp: data.to_parquet(tmp, **{"index": False, **kwargs}))


def save_figure_atomic(fig: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> Path:
    """``fig.savefig`` to ``path`` atomically (the format follows ``path``'s suffix unless ``format=`` is given).

    The figure is not closed (that is the caller's).
    """
    path = Path(path)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, **savefig_kwargs), suffix=".tmp" + path.suffix)
