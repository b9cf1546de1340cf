"""The product package holds only the product: no module of `etl` imports the test support or the local runners,
and nothing in the product edits sys.path (the project is installed: pyproject.toml, `make venv`). The import
graph of `etl/` and `plugins/` has no cycle and only imports downward through the layers of docs/architecture.md,
and no module imports another's private name."""

from __future__ import annotations

import ast
import re
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


# ---- layers and cycles (docs/architecture.md) ------------------------------------------------------------------
# The graph rule is the project's before-stop hook's: every import anywhere in a module (inside functions too),
# relative imports resolved, `from pkg import name` counts as importing `pkg` (its __init__) unless the importer is
# one of pkg's own submodules; a name resolves to the longest module it starts with.
def _modules() -> dict[str, Path]:
    mods = {}
    for base in ("etl", "plugins"):
        for path in sorted((ROOT / base).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            name = name.removeprefix("plugins.")
            mods[name.removesuffix(".__init__")] = path
    return mods


def _graph() -> tuple[dict[str, set[str]], dict[str, list[tuple[str, int, str]]]]:
    """module -> modules it imports; and module -> (imported name, line, target module) of each import."""
    mods = _modules()

    def target(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph, where = {m: set() for m in mods}, {m: [] for m in mods}
    for m, path in mods.items():
        pkg = m if path.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                names = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            for name in names:
                t = target(name)
                if t and t != m and not (m.startswith(t + ".") and mods[t].name == "__init__.py"):
                    graph[m].add(t)
                    where[m].append((name, node.lineno, t))
    return graph, where


def _layers() -> dict[str, int]:
    """module prefix -> layer number, from the table in docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text.split("<!-- layers:", 1)[1].split("\n\n", 1)[0]
    layers = {}
    for row in table.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0][:1].isdigit():
            for name in re.findall(r"`([\w.]+)`", cells[1]):
                layers[name] = int(cells[0].split()[0])
    return layers


def _layer_of(module: str, layers: dict[str, int]) -> int | None:
    name = module
    while name and name not in layers:
        name = name.rpartition(".")[0]
    return layers.get(name) if name else None


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, comps = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return comps


def test_the_import_graph_of_etl_and_plugins_has_no_cycle():
    graph, _ = _graph()
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_module_has_a_layer_and_imports_only_from_its_layer_or_below():
    graph, where = _graph()
    layers = _layers()
    assert len(set(layers.values())) >= 8, "docs/architecture.md: the layer table was not found"
    unplaced = sorted(m for m in graph if _layer_of(m, layers) is None)
    assert unplaced == [], "add these modules to the layer table of docs/architecture.md"
    upward = sorted({f"{_modules()[m].relative_to(ROOT)}:{line}: {t} (layer {_layer_of(m, layers)} imports "
                     f"layer {_layer_of(t, layers)})"
                     for m in graph for _, line, t in where[m] if _layer_of(t, layers) > _layer_of(m, layers)})
    assert upward == []


def test_no_private_name_is_imported_from_another_module():
    graph, where = _graph()
    mods = _modules()
    private = sorted(f"{mods[m].relative_to(ROOT)}:{line}: {name}" for m in graph for name, line, t in where[m]
                     if name != t and name.rpartition(".")[2].startswith("_") and not name.endswith("__")
                     and name.rpartition(".")[0] == t)
    assert private == []


# ---- run-time and development dependencies (requirements.txt, requirements-dev.txt) ----------------------------
def _pinned(path: Path) -> set[str]:
    """Distribution names pinned in a requirements file (normalised), without `-r` includes."""
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.add(re.split(r"[\[=<>!~ ]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def test_the_product_imports_no_development_only_package():
    from importlib.metadata import packages_distributions

    dev_only = _pinned(ROOT / "requirements-dev.txt") - _pinned(ROOT / "requirements.txt")
    assert {"pytest", "ruff", "playwright", "moto", "duckdb"} <= dev_only
    dists = {top: {d.lower().replace("_", "-") for d in ds} for top, ds in packages_distributions().items()}
    offenders = {}
    for folder in ("etl", "dags", "plugins"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            tops = {n.split(".")[0] for n in _imported(path)}
            if bad := sorted(t for t in tops if dists.get(t, set()) & dev_only):
                offenders[str(path.relative_to(ROOT))] = bad
    assert offenders == {}


def test_requirements_dev_includes_the_run_time_set_and_the_package_depends_on_run_time_only():
    assert "-r requirements.txt" in (ROOT / "requirements-dev.txt").read_text().splitlines()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dependencies = { file = ["requirements.txt"] }' in pyproject
    assert not _pinned(ROOT / "requirements.txt") & (_pinned(ROOT / "requirements-dev.txt")), \
        "a package is pinned in both files: keep it in requirements.txt only"
