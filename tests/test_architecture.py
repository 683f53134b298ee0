"""The package's shape: imports flow one way (no circles), and no function grows past a screen."""
import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rf_bench"
MAX_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> Dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (``from . import x`` names the package)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> Dict[str, Set[str]]:
    """Every ``rf_bench`` module -> the ``rf_bench`` modules it imports anywhere (top level or inside functions).

    ``from pkg import name`` counts as an import of ``pkg.name`` when that is a module, else of ``pkg``.
    """
    modules = _modules()
    graph: Dict[str, Set[str]] = {}
    for name, path in modules.items():
        edges: Set[str] = set()
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, path.name == "__init__.py", node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            edges.update(t for t in targets if t in modules and t != name)
        graph[name] = edges
    return graph


def find_cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    cycles: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_cycle_finder_sees_a_circle_and_a_clean_chain():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_import_graph_reads_lazy_and_relative_imports():
    graph = import_graph()
    assert "rf_bench.checkpoints" in graph["rf_bench.models._registry"]  # relative, package-level
    assert "rf_bench.pruning" in graph["rf_bench.trainer"]
    assert "rf_bench.models" in graph["rf_bench"]  # `from . import models`


def test_no_import_cycles():
    assert find_cycles(import_graph()) == []


@pytest.mark.parametrize("lower, upper", [("rf_bench.pruning", "rf_bench.probes.prune"),
                                          ("rf_bench.checkpoints", "rf_bench.hub"),
                                          ("rf_bench.checkpoints", "rf_bench.models._registry")])
def test_shared_modules_sit_below_their_users(lower, upper):
    graph = import_graph()
    assert lower in graph[upper] and upper not in graph[lower]


def _long_functions() -> List[str]:
    out = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    out.append(f"{name}.{node.name}: {length} lines")
    return out


def test_no_function_longer_than_a_screen():
    assert _long_functions() == []


def test_old_import_paths_keep_working():
    from rf_bench import data, pruning
    from rf_bench.probes import prune

    assert prune.global_magnitude_masks is pruning.global_magnitude_masks
    assert prune.apply_masks is pruning.apply_masks
    for public in ("load", "TensorLoader", "ImageSet", "augment_batch", "normalize", "DATASETS"):
        assert hasattr(data, public)


# Layers, bottom up (DESIGN.md): these modules sit below the probes and must never import one, at module level or
# inside a function; a probe renders its own report through rf_bench.reporting, never through rf_bench.report.
BELOW_THE_PROBES = ("rf_bench.report", "rf_bench.claims", "rf_bench.results", "rf_bench.reporting", "rf_bench.runs",
                    "rf_bench.files", "rf_bench.evaluation", "rf_bench.batchnorm", "rf_bench.pruning",
                    "rf_bench.spectral", "rf_bench._numerics")


def upward_imports(graph: Dict[str, Set[str]]) -> List[str]:
    """Imports that run against the layers: a lower module importing a probe, or a probe importing the report."""
    found = [f"{low} -> {target}" for low in BELOW_THE_PROBES for target in sorted(graph.get(low, ()))
             if target.startswith("rf_bench.probes")]
    found += [f"{module} -> rf_bench.report" for module in sorted(graph)
              if module.startswith("rf_bench.probes") and "rf_bench.report" in graph[module]]
    return found


def folder_graph(graph: Dict[str, Set[str]]) -> Dict[str, Set[str]]:
    """The import graph between folders and top-level modules (``rf_bench.probes.prune`` counts as
    ``rf_bench.probes``); the root package, which only registers the models, is left out."""
    def unit(module: str) -> str:
        return ".".join(module.split(".")[:2])

    out: Dict[str, Set[str]] = {}
    for module, targets in graph.items():
        if module == "rf_bench":
            continue
        out.setdefault(unit(module), set()).update(unit(t) for t in targets if t != "rf_bench" and unit(t) != unit(module))
    return out


def test_nothing_below_the_probes_imports_one_and_no_probe_imports_the_report():
    assert upward_imports(import_graph()) == []


def test_the_layer_check_fails_on_a_planted_upward_import():
    graph = import_graph()
    graph["rf_bench.claims"] = graph["rf_bench.claims"] | {"rf_bench.probes.base"}
    graph["rf_bench.probes.cka"] = graph["rf_bench.probes.cka"] | {"rf_bench.report"}
    assert upward_imports(graph) == ["rf_bench.claims -> rf_bench.probes.base", "rf_bench.probes.cka -> rf_bench.report"]


def test_no_cycle_between_folders_and_it_is_seen_when_planted():
    graph = import_graph()
    assert find_cycles(folder_graph(graph)) == []
    planted = dict(graph, **{"rf_bench.reporting": graph["rf_bench.reporting"] | {"rf_bench.probes.prune"}})
    assert any({"rf_bench.probes", "rf_bench.reporting"} <= set(cycle) for cycle in find_cycles(folder_graph(planted)))


def test_every_atomic_rename_is_the_one_helper():
    """``os.replace`` appears in rf_bench/files.py only: every writer goes through its atomic_write."""
    users = sorted(name for name, path in _modules().items() if "os.replace(" in path.read_text())
    assert users == ["rf_bench.files"]


RUN_FILES = ("config.json", "init.safetensors", "model.safetensors", "metrics.jsonl", "warnings.jsonl", "checkpoints",
             "done")
# the same names with another meaning: the Hub's weights file, timm's config.json of a Hub folder, a sweep job's state
OTHER_MEANING = {("rf_bench.checkpoints", "model.safetensors"), ("rf_bench.models._registry", "model.safetensors"),
                 ("rf_bench.hub", "config.json"), ("rf_bench.sweep", "done"), ("rf_bench.cli", "done")}


def test_run_directory_file_names_are_spelled_in_runs_only():
    """Every module names a run directory's files by rf_bench.runs' constants, so the layout has one owner."""
    spelled = set()
    for name, path in _modules().items():
        if name == "rf_bench.runs":
            continue
        strings = {node.value for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Constant)}
        spelled |= {(name, file) for file in RUN_FILES if file in strings}
    assert spelled - OTHER_MEANING == set()
