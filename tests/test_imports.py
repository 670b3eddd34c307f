"""The package's layering: every module imports only modules of its own layer or below (lazy imports
included), and no import cycles among dus's modules."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dus"

# The floors of the house, bottom first (docs/design.md). A module may import its own floor and those below.
LAYERS = [
    (
        "ground",
        [
            "dus.errors",
            "dus.core",
            "dus.yamlfile",
            "dus.options",
            "dus.quiet",
            "dus.private_api",
            "dus.model_dir",
            "dus.bars",
        ],
    ),
    ("read", ["dus.read", "dus.checks", "dus.runtime"]),  # a source is checked as it is opened
    ("plan", ["dus.plan"]),
    ("manifest", ["dus.manifest"]),
    ("write", ["dus.write"]),
    ("verify", ["dus.verify"]),
    ("stages", ["dus.train", "dus.instruct", "dus.eval", "dus.analyze", "dus.testing"]),
    ("pipeline", ["dus.pipeline"]),
    ("api", ["dus.api"]),
    # tools over the Python API: grown models in memory and the plan scan, which plan as a user would
    ("tools", ["dus.grown", "dus.scan"]),
    # the architecture matrix's harness builds through the Python API, as a user would
    ("harness", ["dus.testing.architectures", "dus.testing.matrix", "dus.testing.multimodal"]),
    ("cli", ["dus.cli", "dus.__main__", "dus"]),
]


def module_graph() -> dict[str, set[str]]:
    """{module: the dus modules it imports}, from the source (imports inside functions too)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                # a package's own __init__ is not a dependency of its modules
                if target and target != name and not name.startswith(target + "."):
                    imported.add(target)
        graph[name] = imported
    return graph


def layer(module: str) -> int:
    """The floor of a module: the longest prefix LAYERS names (dus itself is the top: it re-exports the API)."""
    found = [
        (len(prefix), i)
        for i, (_, prefixes) in enumerate(LAYERS)
        for prefix in prefixes
        if module == prefix or (prefix != "dus" and module.startswith(prefix + "."))
    ]
    assert found, f"{module} is on no floor of LAYERS: add it there"
    return max(found)[1]


def back_edges(graph: dict[str, set[str]]) -> list[str]:
    """Imports of a module from a higher floor than the importer's."""
    return sorted(
        f"{m} ({LAYERS[layer(m)][0]}) imports {t} ({LAYERS[layer(t)][0]})"
        for m, targets in graph.items()
        for t in targets
        if layer(t) > layer(m)
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    graph = module_graph()
    assert "dus.api" in graph and "dus.plan.resolved" in graph["dus.api"]  # the walk sees real imports
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_one_above_it():
    graph = module_graph()
    assert back_edges(graph) == []
    ground = {t for m, targets in graph.items() if m.startswith("dus.core") for t in targets}
    assert ground <= {"dus.errors", *(m for m in graph if m.startswith("dus.core"))}  # core: nothing but errors


def test_the_layer_check_finds_a_back_edge():
    graph = {"dus.plan.make": {"dus.write.gguf", "dus.read.source"}, "dus.core.digest": {"dus.errors"}}
    assert back_edges(graph) == ["dus.plan.make (plan) imports dus.write.gguf (write)"]
