"""reweight.io: atomic writes leave the complete new file or the old one, and no temporaries."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reweight.io import atomic_write, save_figure_atomic, write_json_atomic, write_parquet_atomic, write_text_atomic


def _entries(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_text_written_with_parents_and_returned_path(tmp_path):
    target = tmp_path / "a" / "b" / "out.txt"
    got = write_text_atomic(str(target), "héllo\nworld\n")
    assert got == target and isinstance(got, Path)
    assert target.read_bytes() == "héllo\nworld\n".encode("utf-8")
    assert _entries(target.parent) == ["out.txt"]


def test_overwrite_replaces_content(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert _entries(tmp_path) == ["out.txt"]


def test_default_permissions_are_those_of_a_new_file(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    write_text_atomic(tmp_path / "plain.txt", "x")
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0o600
    write_text_atomic(tmp_path / "run.sh", "#!/bin/sh\n", mode=0o755)
    assert stat.S_IMODE((tmp_path / "run.sh").stat().st_mode) == 0o755


@pytest.mark.parametrize("exists", [True, False])
def test_failure_inside_write_leaves_target_unchanged_and_no_temporary(tmp_path, exists):
    target = tmp_path / "data.bin"
    if exists:
        target.write_bytes(b"old content")
    seen = []

    def write(tmp: Path) -> None:
        seen.append(tmp)
        assert tmp.parent == tmp_path and tmp.name.startswith(".data.bin.") and tmp.exists()
        tmp.write_bytes(b"partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_write(target, write)
    assert seen and not seen[0].exists()
    if exists:
        assert target.read_bytes() == b"old content"
        assert _entries(tmp_path) == ["data.bin"]
    else:
        assert _entries(tmp_path) == []


def test_keyboard_interrupt_also_cleans_up(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("old")

    def write(tmp: Path) -> None:
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, write)
    assert target.read_text() == "old"
    assert _entries(tmp_path) == ["t.txt"]


def test_json_nan_refused_before_anything_is_written(tmp_path):
    target = tmp_path / "s.json"
    target.write_text('{"ok": 1}\n')
    with pytest.raises(ValueError):
        write_json_atomic(target, {"x": float("nan")}, indent=2, allow_nan=False)
    assert target.read_text() == '{"ok": 1}\n'
    assert _entries(tmp_path) == ["s.json"]


def test_json_round_trip_and_formatting(tmp_path):
    obj = {"a": [1, 2.5, None], "b": {"c": "é"}}
    path = write_json_atomic(tmp_path / "o.json", obj, indent=2, allow_nan=False)
    text = path.read_text(encoding="utf-8")
    assert text == json.dumps(obj, indent=2) + "\n"
    assert json.loads(text) == obj


def test_parquet_round_trip_table_and_dataframe(tmp_path):
    table = pa.table({"x": [1, 2, 3], "s": ["a", "b", None]})
    write_parquet_atomic(tmp_path / "t.parquet", table)
    assert pq.read_table(tmp_path / "t.parquet").equals(table)

    df = pd.DataFrame({"x": [1, 2], "y": [0.5, 1.5]}, index=[10, 11])
    write_parquet_atomic(tmp_path / "d.parquet", df)
    back = pd.read_parquet(tmp_path / "d.parquet")
    pd.testing.assert_frame_equal(back, df.reset_index(drop=True))  # index dropped, as prepare-data wants
    assert "__index_level_0__" not in pq.read_schema(tmp_path / "d.parquet").names
    assert _entries(tmp_path) == ["d.parquet", "t.parquet"]


def test_parquet_rejects_other_types(tmp_path):
    with pytest.raises(TypeError, match="pyarrow Table or a pandas DataFrame"):
        write_parquet_atomic(tmp_path / "x.parquet", [{"a": 1}])
    assert _entries(tmp_path) == []


def test_figure_png_reads_back_with_pil(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1], [1, 0])
    try:
        path = save_figure_atomic(fig, tmp_path / "figs" / "f.png", dpi=50, metadata={"panels": "[1]"})
    finally:
        plt.close(fig)
    with Image.open(path) as im:  # format inferred from the suffix the temporary kept
        assert im.format == "PNG"
        assert im.size == (100, 75)
        assert im.info.get("panels") == "[1]"
    assert _entries(path.parent) == ["f.png"]


def test_concurrent_writers_do_not_collide(tmp_path):
    target = tmp_path / "shared.txt"
    texts = [f"writer {i}\n" * 2000 for i in range(8)]
    errors = []

    def run(text: str) -> None:
        try:
            for _ in range(5):
                write_text_atomic(target, text)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert target.read_text() in texts  # one writer's complete content, never a mix
    assert _entries(tmp_path) == ["shared.txt"]
