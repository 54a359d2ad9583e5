"""The package's layers: no import cycle, and no layer importing one above it (docs/design.md).

Every import counts, wherever it is: at the top of a module, inside a function (a lazy
import) and under ``if TYPE_CHECKING:``. The modules are read with ``ast``, not imported.
"""

from __future__ import annotations

import ast
import importlib
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "fmq_loader"

# Each layer and the layers it may import besides its own, lowest first. The loader stack
# (transport -> workers -> loading) and images do not know each other: a dataset is only
# something a worker calls.
LAYERS: dict[str, tuple[str, ...]] = {
    "base": (),
    "transport": ("base",),
    "workers": ("base", "transport"),
    "loading": ("base", "transport", "workers"),
    "images": ("base",),
    "tools": ("base", "transport", "workers", "loading", "images"),
    "api": ("base", "transport", "workers", "loading", "images", "tools"),
    "bench": ("base", "transport", "workers", "loading", "images", "tools", "api"),
}
# Modules directly in fmq_loader/ (a subpackage's modules are in the layer of its name).
TOP_LEVEL = {
    "fmq_loader": "api",  # __init__.py: the public API
    "fmq_loader.__main__": "api",
    "fmq_loader.errors": "base",  # imported by every layer
    "fmq_loader.progress": "base",  # progress bars: make-dataset, pack, the CLI
    "fmq_loader._version": "base",
    # Public module paths kept as re-exports of where the code now lives.
    "fmq_loader.transforms": "api",
    "fmq_loader.decode": "api",
    "fmq_loader.pack": "api",
    "fmq_loader.demo": "api",
}
# Public module path -> the module it re-exports.
PUBLIC_PATHS = {
    "fmq_loader.transforms": "fmq_loader.images.transforms",
    "fmq_loader.decode": "fmq_loader.images.decode",
    "fmq_loader.pack": "fmq_loader.images.pack",
    "fmq_loader.demo": "fmq_loader.tools.demo",
}


def find_modules(package: pathlib.Path) -> dict[str, pathlib.Path]:
    """Dotted name -> file, for every .py file and C extension source under ``package``."""
    found = {}
    for path in sorted(package.rglob("*")):
        if path.suffix not in (".py", ".c") or "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                lines.update(range(inner.lineno, inner.end_lineno + 1))
    return lines


def imports_of(name: str, path: pathlib.Path, modules) -> list[tuple[str, int, str]]:
    """``(imported module, line, where)`` for each import of a package module in ``path``;
    ``where`` is "top", "function" or "TYPE_CHECKING"."""
    if path.suffix != ".py":
        return []
    tree = ast.parse(path.read_text(), str(path))
    top = {id(node) for node in tree.body}
    typing_only = _type_checking_lines(tree)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1]
                                + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from pkg import mod` imports the module pkg.mod; `from mod import name`, mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]
        else:
            continue
        where = ("TYPE_CHECKING" if node.lineno in typing_only
                 else "top" if id(node) in top else "function")
        for target in targets:
            while target and target not in modules:  # `import fmq_loader.x.y` -> the module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.append((target, node.lineno, where))
    return found


def import_graph(package: pathlib.Path) -> dict[str, dict[str, tuple[int, str]]]:
    """module -> {imported module: (line, where)}, over every import of the package's own modules."""
    modules = find_modules(package)
    graph: dict[str, dict[str, tuple[int, str]]] = {m: {} for m in modules}
    for name, path in modules.items():
        for target, line, where in imports_of(name, path, modules):
            graph[name].setdefault(target, (line, where))
    return graph


def cycles(graph: dict[str, dict]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
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


def layer_of(module: str) -> str | None:
    if module in TOP_LEVEL:
        return TOP_LEVEL[module]
    parts = module.split(".")
    return parts[1] if len(parts) >= 2 and parts[1] in LAYERS else None


def _describe(graph, component) -> str:
    return "\n".join(f"  {a} -> {b} (line {line}, {where})" for a in component
                     for b, (line, where) in graph[a].items() if b in component)


GRAPH = import_graph(PACKAGE)


def test_every_module_belongs_to_a_layer():
    lost = sorted(m for m in GRAPH if layer_of(m) is None)
    assert not lost, (f"{lost}: put each module in a subpackage named in LAYERS, or name a "
                      "module directly in fmq_loader/ in TOP_LEVEL (tests/test_layout.py)")


def test_no_import_cycle_between_modules():
    found = cycles(GRAPH)
    assert not found, "import cycles:\n" + "\n".join(_describe(GRAPH, c) for c in found)


def test_layers_themselves_form_no_cycle():
    graph = {layer: set(below) for layer, below in LAYERS.items()}
    assert not cycles(graph)
    assert all(b in LAYERS for below in LAYERS.values() for b in below)


def test_no_import_cycle_between_layers():
    layers: dict[str, dict[str, tuple[int, str]]] = {layer: {} for layer in LAYERS}
    edges: dict[tuple[str, str], str] = {}
    for a, targets in GRAPH.items():
        for b, (line, where) in targets.items():
            la, lb = layer_of(a), layer_of(b)
            if la != lb and la is not None and lb is not None:
                layers[la].setdefault(lb, (line, where))
                edges.setdefault((la, lb), f"{a} -> {b} (line {line}, {where})")
    found = cycles(layers)
    assert not found, "\n".join(
        f"layers {c} import each other: " + "; ".join(v for (x, y), v in edges.items()
                                                       if x in c and y in c) for c in found)


def test_no_layer_imports_a_higher_one():
    wrong = [f"{a} ({layer_of(a)}) -> {b} ({layer_of(b)}), line {line}, {where}"
             for a, targets in GRAPH.items() for b, (line, where) in targets.items()
             if layer_of(a) != layer_of(b) and layer_of(b) not in LAYERS[layer_of(a)]]
    assert not wrong, ("imports of a higher (or unrelated) layer; pass what the lower module "
                       "needs in as an argument, or move the shared piece down:\n  "
                       + "\n  ".join(wrong))


def test_subpackage_inits_import_nothing():
    """Importing any module runs its subpackage's ``__init__``: an import there would tie
    every module of the layer to whatever it imports."""
    busy = [f"{m}: {sorted(GRAPH[m])}" for m in GRAPH
            if m.count(".") == 1 and m.split(".")[1] in LAYERS and GRAPH[m]]
    assert not busy, busy


@pytest.mark.parametrize("public,code", sorted(PUBLIC_PATHS.items()))
def test_public_module_paths_reexport_the_code(public, code):
    shim, impl = importlib.import_module(public), importlib.import_module(code)
    assert set(impl.__all__) <= set(shim.__all__), f"{public} misses {set(impl.__all__) - set(shim.__all__)}"
    for name in shim.__all__:
        assert getattr(shim, name) is getattr(impl, name), (public, name)


def test_the_scan_sees_function_and_type_checking_imports(tmp_path):
    """The checks above would pass on a scan that missed imports: show it finds each kind."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import c\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from pkg.a import X\n")
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.sub.b": (1, "top")}
    assert graph["pkg.sub.b"] == {"pkg.c": (2, "function")}
    assert graph["pkg.c"] == {"pkg.a": (3, "TYPE_CHECKING")}
    assert cycles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]


def test_design_md_names_every_module():
    """docs/design.md opens with one line per module; a new module gets its line there."""
    text = (PACKAGE.parent / "docs" / "design.md").read_text()
    listing = text[text.index("```\nfmq_loader/\n"):]
    listing = listing[:listing.index("\n```", 4)]
    missing = sorted(str(path.relative_to(PACKAGE)) for path in find_modules(PACKAGE).values()
                     if path.parent.name != "bench" and path.name != "__init__.py"
                     and f" {path.name} " not in listing)
    assert not missing, f"docs/design.md's module list lacks {missing}"
