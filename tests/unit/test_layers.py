"""No import cycles, between modules or between the controller's packages.

The layers themselves are the import contract in pyproject.toml (`lint-imports`, run by
scripts/check); a layers contract does not see a cycle between two modules it does not
name, so this test refuses every cycle, naming the imports that close it. Imports under
`TYPE_CHECKING` count too: they never run, but a cycle of types is a cycle of meaning (a
module that cannot be read, typed or moved without the other). So does `from P import x`
inside package P: it runs P's `__init__`, which may import the importing module back.

No import is let off: the last one (the registry naming the step kinds' type, while the
plan it serves is imported by every kind) went when the kinds' interface moved below
the plan (`controller.step_kind`).
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterable
from pathlib import Path

import grimp

import controller


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def own_package_imports() -> set[tuple[str, str]]:
    """(module, package) for each `from package import ...` inside that very package."""
    root = Path(controller.__file__).parent.parent
    found = set()
    for path in sorted((root / "controller").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        module = ".".join(parts)
        ancestors = {".".join(parts[:i]) for i in range(2, len(parts))}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module in ancestors:
                found.add((module, node.module))
    return found


@functools.cache
def imports() -> frozenset[tuple[str, str]]:
    """Every (importer, imported) among the controller's modules, `TYPE_CHECKING` too."""
    g = grimp.build_graph("controller", exclude_type_checking_imports=False, cache_dir=None)
    return frozenset((module, imported) for module in g.modules
                     for imported in g.find_modules_directly_imported_by(module))


def graph(grouped: bool) -> tuple[dict[str, set[str]], dict[tuple[str, str], str]]:
    edges: dict[str, set[str]] = {}
    why: dict[tuple[str, str], str] = {}
    for module, imported in sorted(imports() | own_package_imports()):
        a, b = (package(module), package(imported)) if grouped else (module, imported)
        if a != b:
            edges.setdefault(a, set()).add(b)
            edges.setdefault(b, set())
            why.setdefault((a, b), f"{module} -> {imported}")
    return edges, why


def explain(components: Iterable[list[str]], edges: dict[str, set[str]],
            why: dict[tuple[str, str], str]) -> str:
    return "\n".join(
        f"cycle among {', '.join(c)}: " + "; ".join(
            why[(a, b)] for a in c for b in c if b in edges[a])
        for c in components)


def test_no_module_imports_itself_back() -> None:
    edges, why = graph(grouped=False)
    found = cycles(edges)
    assert not found, explain(found, edges, why)


def test_no_two_packages_import_each_other() -> None:
    edges, why = graph(grouped=True)
    found = cycles(edges)
    assert not found, explain(found, edges, why)


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_registry_naming_the_step_kinds_would_be_found() -> None:
    """The import let off until the kinds' interface moved below the plan (a type-only
    `controller.registry -> controller.steps`): were it back, it closes a cycle."""
    edges, _ = graph(grouped=False)
    edges["controller.registry"].add("controller.steps")
    assert any({"controller.registry", "controller.steps", "controller.plan"} <= set(c)
               for c in cycles(edges))
