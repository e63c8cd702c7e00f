"""The house rules, checked on the source: modules import downward only (no import circles, lazy
imports inside functions included) and none imports another module's private name (the package,
its tests, benchmarks and scripts alike)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Folders of the package and the dotted names they install as (see pyproject's package-dir).
PACKAGE_DIRS = {"nst_deploy": "nst_deploy", "kernels": "nst_deploy.kernels", "export": "nst_deploy.export"}
OTHER_DIRS = ("tests", "benchmarks", "scripts")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    base = PACKAGE_DIRS[rel.parts[0]]
    parts = [*base.split("."), *rel.parts[1:]]
    parts[-1] = parts[-1].removesuffix(".py")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _package_modules() -> dict[str, Path]:
    return {_module_name(p): p for d in PACKAGE_DIRS for p in sorted((ROOT / d).rglob("*.py"))}


MODULES = _package_modules()


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _imports(path: Path, name: str | None):
    """``(line, module, imported name or None)`` for every import in ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = name.split(".") if name else []
    if name and not _is_package(name):
        here = here[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            for a in node.names:
                yield node.lineno, mod, a.name


def _private(part: str) -> bool:
    return part.startswith("_") and not part.startswith("__")


def _edges() -> dict[str, set[str]]:
    """Project module -> the project modules it imports (``from pkg import submodule`` counts as the
    submodule; importing a package counts as its ``__init__``)."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for name, path in MODULES.items():
        for _, mod, item in _imports(path, name):
            target = f"{mod}.{item}" if item and f"{mod}.{item}" in MODULES else mod
            if target in MODULES and target != name:
                graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _package_edges_without_inits(graph):
    """A package's ``__init__`` re-exports its submodules; a submodule importing the package for one of
    those names is not a circle of design, so edges into a package's own ``__init__`` from inside it drop."""
    return {m: {t for t in ts if not (_is_package(t) and m.startswith(t + "."))} for m, ts in graph.items()}


def test_no_import_circles():
    cycles = _cycles(_package_edges_without_inits(_edges()))
    assert not cycles, f"import circles: {cycles}"


def _private_imports() -> list[str]:
    found = []
    files = [(p, n) for n, p in MODULES.items()]
    files += [(p, None) for d in OTHER_DIRS for p in sorted((ROOT / d).rglob("*.py"))]
    for path, name in files:
        owner = name if name and _is_package(name) else (name.rsplit(".", 1)[0] if name else None)
        for line, mod, item in _imports(path, name):
            if not (mod == "nst_deploy" or mod.startswith("nst_deploy.")):
                continue
            where = f"{path.relative_to(ROOT)}:{line}"
            full = f"{mod}.{item}" if item else mod
            if item and _private(item) and full not in MODULES:
                found.append(f"{where}: imports the private name {item} of {mod}")
                continue
            # a private module belongs to its package: only modules of that package, and the package's own
            # tests (tests/kernels for nst_deploy.kernels), may import it
            parts = full.split(".") if full in MODULES else mod.split(".")
            for i, part in enumerate(parts):
                if _private(part):
                    package = ".".join(parts[:i])
                    tests = ROOT / "tests" / package.split(".")[-1]
                    if tests in path.parents:
                        break
                    if owner is None or not (owner == package or owner.startswith(package + ".")):
                        found.append(f"{where}: imports {'.'.join(parts[:i + 1])}, private to {package}")
                    break
    return found


def test_no_private_imports_across_modules():
    found = _private_imports()
    assert not found, "\n".join(found)


def _private_attribute_uses() -> list[str]:
    """``module._name`` (and ``setattr(module, "_name", ...)``, as monkeypatch does) on a project module
    imported under a name, from outside that module."""
    found = []
    files = [(p, n) for n, p in MODULES.items()]
    files += [(p, None) for d in OTHER_DIRS for p in sorted((ROOT / d).rglob("*.py"))]
    for path, name in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases: dict[str, str] = {}
        for _line, mod, item in _imports(path, name):
            target = f"{mod}.{item}" if item else mod
            if target in MODULES:
                aliases[target.rsplit(".", 1)[-1] if item else target.split(".")[0]] = target
        for node in ast.walk(tree):
            hit = None
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _private(node.attr):
                hit = node.value.id, node.attr
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "setattr"
                  and len(node.args) >= 2 and isinstance(node.args[0], ast.Name)
                  and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
                  and _private(node.args[1].value)):
                hit = node.args[0].id, node.args[1].value
            if hit and hit[0] in aliases and aliases[hit[0]] != name:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: uses {hit[1]} of {aliases[hit[0]]}")
    return found


def test_no_private_attributes_of_other_modules():
    found = _private_attribute_uses()
    assert not found, "\n".join(found)


def test_the_checks_see_the_package():
    assert {"nst_deploy.cli", "nst_deploy.kernels.gram", "nst_deploy.export.core", "nst_deploy.nets.io"} <= set(MODULES)
    graph = _edges()
    assert "nst_deploy.errors" in graph["nst_deploy.kernels.gram"] or "nst_deploy.kernels._dispatch" in graph[
        "nst_deploy.kernels.gram"]
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
