"""Fails on an import cycle inside the meshnet package, and on an unexplained local import.

Every import between meshnet modules is an edge, wherever it is written: a cycle hidden behind a
function-local import is still a cycle. Imports under `if TYPE_CHECKING:` are left out (they do
not run). A function-local import is allowed only with a comment on its line or heading its group of
imports saying why (keeping start-up fast is the usual reason).

Usage: python scripts/check_imports.py [PACKAGE_DIR]   (exit 1 and one line per problem)
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported meshnet module
    line: int
    local: bool  # inside a function
    explained: bool  # a comment on the line or heading its group of imports


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING``: what is under it never runs."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, in_function: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            yield from _walk(ast.Module(body=child.orelse, type_ignores=[]), in_function)
            continue
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, in_function
        function = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        yield from _walk(child, in_function or function)


def _comment_above(lines: list[str], index: int) -> bool:
    """Whether a comment heads the group of imports (blank lines allowed) line ``index`` is in."""
    for line in reversed(lines[:index]):
        text = line.strip()
        if text.startswith("#"):
            return True
        if text and not text.startswith(("import ", "from ")):
            return False
    return False


def imports_of(root: Path, path: Path, modules: set[str]) -> Iterator[Import]:
    source = module_name(root, path)
    text = path.read_text()
    lines = text.splitlines()
    package = source if path.name == "__init__.py" else source.rpartition(".")[0]
    for node, local in _walk(ast.parse(text, str(path)), False):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                targets.append(candidate if candidate in modules else base)
        explained = "#" in lines[node.lineno - 1] or _comment_above(lines, node.lineno - 1)
        for target in targets:
            if target in modules and target != source:
                yield Import(source, target, node.lineno, local, explained)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def problems(root: Path) -> list[str]:
    files = sorted(root.rglob("*.py"))
    modules = {module_name(root, f) for f in files}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    found: list[str] = []
    for path in files:
        seen: set[int] = set()
        for imp in imports_of(root, path, modules):
            graph[imp.source].add(imp.target)
            if imp.local and not imp.explained and imp.line not in seen:
                seen.add(imp.line)
                found.append(
                    f"{path}:{imp.line}: function-local import of {imp.target} without a comment "
                    "saying why (move it to the top, or explain it)"
                )
    for cycle in find_cycles(graph):
        edges = [f"{a} -> {b}" for a in cycle for b in sorted(graph[a]) if b in cycle]
        found.append(f"import cycle among {', '.join(cycle)}: {'; '.join(edges)}")
    return found


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent / "meshnet"
    found = problems(root)
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
