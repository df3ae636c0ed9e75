"""The layout of paddle_qwen2: argparse only in `paddle_qwen2.cli`, and no import cycle between its subpackages
(read from the `import` / `from ... import` statements of every module with `ast`, function-level ones included)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "paddle_qwen2"
SUBPACKAGES = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())


def modules():
    """(path relative to the package, its dotted package, its parsed tree) of every module of paddle_qwen2."""
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        package = ".".join(("paddle_qwen2", *rel.parts[:-1]))
        yield rel, package, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def imported_names(package: str, tree: ast.AST) -> list[str]:
    """The absolute dotted names `tree` imports (`from . import x` gives `package.x`)."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            names += [f"{module}.{alias.name}" for alias in node.names] if node.module is None else [module]
    return names


def import_graph() -> dict[str, set[str]]:
    """subpackage -> the other subpackages of paddle_qwen2 its modules import."""
    graph = {name: set() for name in SUBPACKAGES}
    for rel, package, tree in modules():
        if len(rel.parts) < 2:  # a top-level module, not in a subpackage
            continue
        for name in imported_names(package, tree):
            parts = name.split(".")
            if parts[0] == "paddle_qwen2" and len(parts) > 1 and parts[1] in graph and parts[1] != rel.parts[0]:
                graph[rel.parts[0]].add(parts[1])
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of `graph` as a path [a, b, ..., a], or None."""
    state = {}  # node -> "open" while on the DFS stack, "done" after

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, nxt])):
                return cycle
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return None


def test_only_the_cli_imports_argparse():
    importers = [
        str(rel)
        for rel, package, tree in modules()
        if rel.parts[0] != "cli" and any(n.split(".")[0] == "argparse" for n in imported_names(package, tree))
    ]
    assert importers == [], f"argparse belongs in paddle_qwen2/cli/: {importers}"


def test_subpackages_import_each_other_without_cycles():
    graph = import_graph()
    assert {"cli", "conversion", "embedding", "export", "inference", "serving", "training"} <= set(graph)
    assert graph["cli"] >= {"conversion", "export", "training"}  # the graph is read at all
    assert find_cycle(graph) is None, f"import cycle between subpackages: {' -> '.join(find_cycle(graph))}"


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
