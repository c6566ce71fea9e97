"""Atomic file writes: write a temporary sibling, then ``os.replace`` it onto the target.

A reader (or a resumed run) therefore sees either no file or a complete one, never a partial write.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then move ``tmp_path`` onto ``path``; the temporary is removed on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_parquet(path: str | Path, table: pa.Table) -> Path:
    return write_atomic(path, lambda tmp: pq.write_table(table, tmp))


def write_json(path: str | Path, obj: Any) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n"))
