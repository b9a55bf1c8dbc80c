"""The package's shape, read from its own imports (issue 13).

Every `import` / `from ... import` in erasure_core counts, also those inside functions: a cycle hidden behind a
function-level import is still a cycle a newcomer has to untangle.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "erasure_core"
NODES = ROOT / "nodes"
COMFY_PACKAGES = {"comfy", "comfy_api", "folder_paths", "comfy_extras", "server", "nodes"}
CORE_MAX_LINES = 450
NODES_MAX_LINES = 250


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _core_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(CORE.rglob("*.py"))}


def _imported_names(path: Path, modules=frozenset()) -> set[str]:
    """Absolute dotted names of everything `path` imports, anywhere in the file. `from pkg import name` names
    the submodule pkg.name when `modules` has one, else pkg itself (the name then comes from pkg/__init__)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            for alias in node.names:
                sub = f"{stem}.{alias.name}"
                found.add(sub if sub in modules else stem)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _core_modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imported_names(path, modules):
            # an import of a.b.c runs a, a.b and a.b.c: each is an edge when it is one of ours
            parts = imported.split(".")
            for i in range(1, len(parts) + 1):
                target = ".".join(parts[:i])
                if target in modules and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def _package_edges_removed(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Drop the implicit edge from `import a.b.c` to the packages above it (a, a.b) when they contain the
    importer: Python initialises them first anyway, that is no design arrow. A name taken from a package's
    __init__ (`from erasure_core import load_model`) is still an edge: _imported_names keeps it."""
    return {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_find_cycle_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_imports_inside_functions_are_counted():
    # loading.load_model imports the demo package inside the function only
    modules = _core_modules()
    assert "erasure_core.demo" in _imported_names(CORE / "loading.py", modules)
    assert "erasure_core.demo" in _graph()["erasure_core.loading"]


def test_no_import_cycle_in_erasure_core():
    # Package __init__ files re-export their public names, so they import downwards; a module that imports
    # its own package's __init__ is still an arrow upwards and is counted.
    graph = _package_edges_removed(_graph())
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_erasure_core_never_imports_comfyui():
    offenders = []
    for name, path in _core_modules().items():
        roots = {imported.split(".")[0] for imported in _imported_names(path)}
        if roots & COMFY_PACKAGES:
            offenders.append(f"{name}: {sorted(roots & COMFY_PACKAGES)}")
    assert not offenders, offenders


def _too_long(folder: Path, limit: int) -> list[str]:
    return [f"{p.relative_to(ROOT)}: {n} lines" for p in sorted(folder.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > limit]


def test_erasure_core_modules_are_short():
    assert not _too_long(CORE, CORE_MAX_LINES)


def test_node_modules_are_short():
    assert not _too_long(NODES, NODES_MAX_LINES)


# The bottom layer (architecture.md): these import nothing of the package but each other.
BOTTOM = {"erasure_core.errors", "erasure_core.models", "erasure_core.files", "erasure_core.weightfile",
          "erasure_core.layouts", "erasure_core.ldm_configs", "erasure_core.options"}


def test_bottom_layer_imports_only_the_bottom_layer():
    graph = _package_edges_removed(_graph())
    upward = {m: sorted(graph[m] - BOTTOM) for m in BOTTOM if m in graph and graph[m] - BOTTOM}
    assert not upward, upward


def test_probes_do_not_reach_up_into_the_report():
    graph = _graph()
    offenders = [m for m, targets in graph.items()
                 if m.startswith("erasure_core.attacks") and "erasure_core.report" in targets]
    assert not offenders, offenders


def test_no_module_is_named_like_a_standard_library_module():
    # `erasure_core/io.py` once shadowed the standard `io` for any script run from inside the package (its
    # folder comes first on sys.path) and forced `import io as _io` elsewhere; a name says what a module does.
    import sys
    offenders = [str(p.relative_to(ROOT)) for folder in (CORE, NODES) for p in sorted(folder.rglob("*.py"))
                 if p.stem in sys.stdlib_module_names]
    assert not offenders, offenders
