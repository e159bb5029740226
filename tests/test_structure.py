"""The project's modules import each other one way: no cycles (function-level imports included),
and the layers of training_job and the shared package point downwards only."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("rakuten_common", "model_server", "training_job", "benchmarks", "loadtests")

#: training_job's layers, top first: a module may import its own layer and those below it.
LAYERS = [
    {"training_job.__main__", "training_job.batch_predict", "training_job.promote", "training_job.upload_data",
     "training_job.sample_data"},
    {"training_job.promotion"},
    {"training_job.prediction", "training_job.training"},
    {"training_job.data"},
    {"training_job.config"},
    {"rakuten_common"},
]


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Every project module ``path`` imports, at any depth of its code (``from a import b`` counts
    as importing ``a.b`` when that is a module, else ``a``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, name, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
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
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_between_the_projects_modules(graph):
    assert cycles(graph) == []


def test_the_cycle_finder_sees_a_cycle_hidden_in_a_function():
    """The check itself can fail: a function-level import closing a loop is a cycle."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def _layer(module: str) -> int | None:
    for depth, layer in enumerate(LAYERS):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in layer):
            return depth
    return None


def test_training_job_layers_point_downwards(graph):
    wrong = []
    for module, targets in graph.items():
        depth = _layer(module)
        if depth is None:
            continue
        for target in targets:
            target_depth = _layer(target)
            if target_depth is not None and target_depth < depth:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


@pytest.mark.parametrize("package, forbidden", [
    ("rakuten_common", ("training_job", "model_server", "benchmarks")),
    ("model_server", ("training_job", "benchmarks")),
    ("training_job", ("model_server", "benchmarks")),
])
def test_shared_code_does_not_reach_up(graph, package, forbidden):
    wrong = [f"{module} -> {target}" for module, targets in graph.items()
             if module.split(".")[0] == package for target in targets if target.split(".")[0] in forbidden]
    assert wrong == []
