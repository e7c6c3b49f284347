"""The lesson never leans on the machinery: gpt2/ imports nothing from harness/ (or the scripts)."""

import ast
from pathlib import Path

from conftest import ROOT


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_gpt2_imports_nothing_from_harness_or_the_scripts():
    for path in sorted((ROOT / "gpt2").glob("*.py")):
        upward = {m for m in imported_modules(path) if m.split(".")[0] in ("harness", "train", "evaluate")}
        assert not upward, f"{path.name} imports {sorted(upward)}: gpt2/ must read without harness/"
