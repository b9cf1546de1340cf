"""The product package holds only the product: no module of `etl` imports the test support or the local runners,
and nothing in the product edits sys.path (the project is installed: pyproject.toml, `make venv`)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_no_product_module_imports_test_support_or_the_local_runners():
    offenders = {}
    for path in sorted((ROOT / "etl").rglob("*.py")):
        if path.is_relative_to(ROOT / "etl" / "local"):
            continue
        bad = {n for n in _imported(path) if n.split(".")[0] == "tests" or n.startswith("etl.local")}
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert offenders == {}


def test_nothing_in_the_product_edits_sys_path():
    editing = [str(p.relative_to(ROOT)) for folder in ("etl", "dags", "plugins") for p in (ROOT / folder).rglob("*.py")
               if "sys.path" in p.read_text()]
    assert editing == []
