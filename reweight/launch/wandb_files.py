"""Read W&B offline runs (``wandb/offline-run-*/run-<id>.wandb``) without an account or network.

wandb 0.31 writes an offline run as one transaction log, ``run-<id>.wandb``; ``wandb-summary.json`` and
``config.yaml`` only appear after a sync, and wandb no longer ships a Python reader for the log (its
``wandb.sdk.internal.datastore`` is gone). The format is LevelDB's log format behind a 7-byte header:

- file header: ``b":W&B"``, magic ``0xBEE1`` (uint16 LE), version 0 (uint8);
- 32 KiB blocks of chunks ``crc32 (uint32 LE) | length (uint16 LE) | type (uint8) | data``, with
  ``crc32 = zlib.crc32(type byte + data)``; type 1 = a whole record, 2/3/4 = first/middle/last piece;
  a block tail shorter than a chunk header is zero padding;
- each record is a ``wandb.proto.wandb_internal_pb2.Record`` (run, config, history, summary, exit...).

A truncated or corrupt tail (a run still being written, a killed process) ends the scan at the last
good record rather than failing: the reader reports what was durably written.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FILE_MAGIC = b":W&B"
FILE_HEADER = struct.Struct("<4sHB")
FILE_MAGIC_NUMBER = 0xBEE1
FILE_VERSION = 0
BLOCK_SIZE = 32 * 1024
CHUNK_HEADER = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class WandbFileError(ValueError):
    """Not a W&B transaction log (bad header)."""


def iter_record_bytes(path: str | Path) -> Iterator[bytes]:
    """The serialized records of a ``.wandb`` file, in order; stops at a truncated or corrupt tail."""
    data = Path(path).read_bytes()
    if len(data) < FILE_HEADER.size:
        raise WandbFileError(f"{path}: too short to be a W&B run file")
    magic, number, version = FILE_HEADER.unpack_from(data, 0)
    if magic != FILE_MAGIC or number != FILE_MAGIC_NUMBER or version != FILE_VERSION:
        raise WandbFileError(f"{path}: not a W&B run file (header {data[:7]!r})")
    pos = FILE_HEADER.size
    pending: list[bytes] | None = None
    while pos < len(data):
        left_in_block = BLOCK_SIZE - pos % BLOCK_SIZE
        if left_in_block < CHUNK_HEADER.size:
            pos += left_in_block  # zero padding at the end of a block
            continue
        if pos + CHUNK_HEADER.size > len(data):
            return
        crc, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        start = pos + CHUNK_HEADER.size
        end = start + length
        if kind == 0 and length == 0:  # preallocated / zeroed space: nothing more was written
            return
        if end > len(data) or length > left_in_block - CHUNK_HEADER.size:
            return
        chunk = data[start:end]
        if zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF != crc:
            return
        pos = end
        if kind == FULL:
            pending = None
            yield chunk
        elif kind == FIRST:
            pending = [chunk]
        elif kind == MIDDLE and pending is not None:
            pending.append(chunk)
        elif kind == LAST and pending is not None:
            pending.append(chunk)
            yield b"".join(pending)
            pending = None
        else:
            return


def iter_records(path: str | Path) -> Iterator[Any]:
    """The ``wandb_internal_pb2.Record`` messages of a ``.wandb`` file."""
    from wandb.proto import wandb_internal_pb2

    for raw in iter_record_bytes(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        yield record


def _item_key(item: Any) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def _value(item: Any) -> Any:
    try:
        return json.loads(item.value_json)
    except (json.JSONDecodeError, TypeError):
        return item.value_json


def _apply_update(values: dict[str, Any], record: Any) -> None:
    """Apply a config or summary record (its ``update`` items, then its ``remove`` items) to ``values``."""
    for item in record.update:
        values[_item_key(item)] = _value(item)
    for item in record.remove:
        values.pop(_item_key(item), None)


@dataclass
class OfflineRun:
    """What an offline run file says about the run."""

    path: Path
    run_id: str = ""
    project: str = ""
    entity: str = ""
    name: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    start_time: float = 0.0

    @property
    def state(self) -> str:
        if self.exit_code is None:
            return "running-or-crashed"
        return "finished" if self.exit_code == 0 else "failed"

    def last_values(self) -> dict[str, Any]:
        """Each metric's last logged value: the summary record if any, else the history."""
        values: dict[str, Any] = {}
        for row in self.history:
            values.update(row)
        values.update(self.summary)
        return values

    def histograms(self) -> dict[int, dict[str, tuple[list[float], list[float]]]]:
        """``{step: {key: (counts, bin_edges)}}`` of every ``wandb.Histogram`` logged (see :func:`row_histograms`)."""
        out: dict[int, dict[str, tuple[list[float], list[float]]]] = {}
        for row in self.history:
            found = row_histograms(row)
            if found:
                out.setdefault(int(row.get("_step", -1)), {}).update(found)
        return out

    def config_value(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node


def row_histograms(row: dict[str, Any]) -> dict[str, tuple[list[float], list[float]]]:
    """The histograms of one history row: ``{key: (counts, bin_edges)}``.

    wandb writes a ``wandb.Histogram`` logged as ``key`` as nested items ``key/_type`` (``"histogram"``),
    ``key/values`` (the counts) and ``key/bins`` (the edges, one more than the counts).
    """
    out = {}
    for name, value in row.items():
        if name.endswith("/_type") and value == "histogram":
            key = name[: -len("/_type")]
            out[key] = (row.get(f"{key}/values", []), row.get(f"{key}/bins", []))
    return out


def read_offline_run(path: str | Path) -> OfflineRun:
    """Parse one ``run-<id>.wandb`` file."""
    run = OfflineRun(path=Path(path))
    for record in iter_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.project, run.entity = r.run_id, r.project, r.entity
            run.name, run.group, run.tags = r.display_name, r.run_group, list(r.tags)
            run.start_time = r.start_time.seconds + r.start_time.nanos * 1e-9
            for item in r.config.update:
                run.config[_item_key(item)] = _value(item)
        elif kind == "config":
            _apply_update(run.config, record.config)
        elif kind == "history":
            row = {_item_key(item): _value(item) for item in record.history.item}
            if record.history.HasField("step"):
                row.setdefault("_step", record.history.step.num)
            run.history.append(row)
        elif kind == "summary":
            _apply_update(run.summary, record.summary)
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run


def find_offline_runs(root: str | Path) -> list[OfflineRun]:
    """Every offline run under ``root`` (a ``WANDB_DIR``, its ``wandb/`` folder, or a run folder)."""
    root = Path(root)
    files = sorted(set(root.glob("**/offline-run-*/run-*.wandb")) | set(root.glob("run-*.wandb")))
    return [read_offline_run(f) for f in files]
