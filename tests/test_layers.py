"""The layering of docs/architecture.md holds: no module of reweight imports from a higher layer."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "reweight"


def layers() -> dict[str, int]:
    """part (subpackage or module of reweight) -> layer, from the table in docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text.split("<!-- layers:", 1)[1]
    out: dict[str, int] = {}
    for line in table.splitlines()[1:]:
        row = re.match(r"^\|\s*(\d+)\s*\|([^|]*)\|", line)
        if row:
            for part in re.findall(r"`([a-z_]+)`", row.group(2)):
                out[part] = int(row.group(1))
        elif out and not line.startswith("|"):
            break
    return out


def part_of(module: str) -> str | None:
    """``reweight.study.pipeline`` -> ``study``; ``reweight`` itself -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def imports(path: Path) -> list[tuple[str, int]]:
    """Every ``reweight...`` module imported anywhere in the file (functions included), with its line."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "reweight"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing package
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                targets = [".".join(base + [node.module])] if node.module else [".".join(base + [a.name]) for a in node.names]
            else:
                targets = [node.module or ""]
            found += [(t, node.lineno) for t in targets if t.split(".")[0] == "reweight"]
    return found


def test_the_layer_table_covers_every_part_of_the_package():
    table = layers()
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if not p.name.startswith("_") and (p.suffix == ".py" or (p / "__init__.py").exists())}
    assert parts - set(table) == set(), "place these in docs/architecture.md's layer table"
    assert set(table) - parts == set(), "the layer table names parts that do not exist"


def test_no_module_imports_from_a_higher_layer():
    table = layers()
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = part_of(".".join(path.relative_to(ROOT).with_suffix("").parts))
        for target, line in imports(path):
            dest = part_of(target)
            if dest is None or source == dest:
                continue
            if source is None:  # reweight/__init__.py imports nothing of ours
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
            elif table[dest] > table[source]:
                upward.append(f"{path.relative_to(ROOT)}:{line} ({source}, layer {table[source]}) imports {target} (layer {table[dest]})")
    assert upward == []


def test_the_check_sees_an_upward_import(tmp_path):
    """The checker itself: a lower layer importing a higher one is caught (guards the test above)."""
    fake = tmp_path / "reweight" / "weights.py"
    fake.parent.mkdir()
    fake.write_text("def f():\n    from reweight.study.pipeline import Study\n    from . import loss\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        found = imports(fake)
    finally:
        ROOT = saved
    assert ("reweight.study.pipeline", 2) in found and ("reweight.loss", 3) in found
    table = layers()
    assert table[part_of("reweight.study.pipeline")] > table["weights"]
