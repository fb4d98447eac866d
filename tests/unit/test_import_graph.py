"""The package's import graph, read from the source with `ast` (nothing is imported): no cycles, dependencies
point down the serving layers, the core knows no transport, the client SDK needs no server, and imports inside
functions are kept for heavy optional dependencies.

Layers of the serving side (services/), lowest first; a module may import its own layer and the ones below:

    config  <  observability, storage, augment  <  core  <  frontends  <  app

`latentserve.client` (the SDK) imports no serving module except the augmentation spec both sides check with;
`latentserve.models` imports nothing of the serving side, the client or the generated protobuf code.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# source folder -> import name (pyproject.toml package-dir)
PACKAGES = {"latentserve": "latentserve", "models": "latentserve.models", "services": "latentserve.services"}
SERVICE_LAYERS = {
    "latentserve.services.config": 0,
    "latentserve.services.access": 0,
    "latentserve.services.observability": 1,
    "latentserve.services.storage": 1,
    "latentserve.services.augment": 1,
    "latentserve.services.core": 2,
    "latentserve.services.frontends": 3,
    "latentserve.services.app": 4,
}
TRANSPORT = ("grpc", "grpc_health", "grpc_reflection", "google.protobuf", "latentserve.v1", "fastapi", "starlette")
# Imports allowed inside functions: heavy or optional dependencies, loaded when a feature is used.
LAZY_OK = ("torch", "ray", "onnx", "onnxruntime", "uvloop", "sklearn", "latentserve.models.latent_ops",
           "latentserve.services.core.latent_ops", "latentserve.services.frontends.grpc._grpc_transport")


def _modules() -> dict[str, Path]:
    out = {}
    for folder, name in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            if "repository" in rel.parts or rel.parts[0] in ("v1",) and folder == "latentserve":
                continue
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([name, *parts])] = path
    return out


MODULES = _modules()


def _imports(path: Path, module: str) -> list[tuple[str, bool]]:
    """(imported name, inside a function) for every import of `path`, TYPE_CHECKING blocks left out."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative import
                    pkg = module.split(".")
                    if path.name != "__init__.py":
                        pkg = pkg[:-1]
                    pkg = pkg[: len(pkg) - child.level + 1]
                    base = ".".join(pkg + ([base] if base else []))
                for a in child.names:
                    sub = f"{base}.{a.name}"
                    compiled = a.name.startswith("_") and base in MODULES  # an extension module (.so)
                    found.append((sub if sub in MODULES or compiled else base, in_function))
            visit(child, inner)

    visit(tree, False)
    return found


GRAPH = {m: _imports(p, m) for m, p in MODULES.items()}


def _internal(name: str) -> str | None:
    """The latentserve module `name` refers to (a package import -> its __init__), or None."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _layer(module: str) -> int | None:
    for prefix, rank in SERVICE_LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            return rank
    return None


def test_graph_covers_the_package():
    assert "latentserve.services.core.operations" in MODULES and "latentserve.client.calls" in MODULES
    assert len(MODULES) > 80


def test_no_import_cycles():
    edges = {m: {t for name, _ in deps if (t := _internal(name)) and t != m} for m, deps in GRAPH.items()}
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def strong(v: str) -> None:  # Tarjan
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    assert not cycles, f"import cycles: {cycles}"


def test_serving_dependencies_point_down():
    wrong = []
    for module, deps in GRAPH.items():
        mine = _layer(module)
        if mine is None:
            continue
        for name, _ in deps:
            target = _internal(name)
            theirs = _layer(target) if target else None
            if theirs is not None and theirs > mine:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "a serving module imports a layer above its own:\n" + "\n".join(wrong)


def test_core_knows_no_transport():
    wrong = [f"{m} -> {name}" for m, deps in GRAPH.items() if m.startswith(("latentserve.services.core",
             "latentserve.services.storage", "latentserve.services.augment", "latentserve.services.config"))
             for name, _ in deps if name == "grpc" or name.startswith(tuple(t + "." for t in TRANSPORT) + TRANSPORT)]
    assert not wrong, "the core and its parts must not import gRPC, protobuf or HTTP:\n" + "\n".join(wrong)


def test_client_needs_no_server():
    allowed = ("latentserve.client", "latentserve.errors", "latentserve.metadata", "latentserve.v1",
               "latentserve.models.class_check", "latentserve.models.gates", "latentserve.services.augment.spec")
    wrong = [f"{m} -> {name}" for m, deps in GRAPH.items() if m.startswith("latentserve.client")
             for name, _ in deps
             if name.split(".")[0] in ("ray", "onnxruntime", "redis", "prometheus_client")
             or name.startswith("latentserve") and not name.startswith(allowed)]
    assert not wrong, "the client SDK must install and import without the server:\n" + "\n".join(wrong)


@pytest.mark.parametrize("command", ["models", "sample", "encode", "decode", "interpolate", "edit", "augment"])
def test_client_commands_import_only_the_client(command):
    deps = [name for name, _ in GRAPH[f"latentserve.commands.{command}"] if name.startswith("latentserve")]
    wrong = [d for d in deps if not d.startswith(("latentserve.client", "latentserve.errors", "latentserve.commands",
                                                  "latentserve.services.augment.spec"))]
    assert not wrong, wrong


def test_models_do_not_import_the_serving_side():
    wrong = [f"{m} -> {name}" for m, deps in GRAPH.items() if m.startswith("latentserve.models")
             for name, _ in deps if name.startswith(("latentserve.services", "latentserve.client", "latentserve.v1"))]
    assert not wrong, wrong


def test_function_level_imports_only_for_heavy_dependencies():
    wrong = []
    for m, deps in GRAPH.items():
        if not m.startswith(("latentserve.services", "latentserve.client")):
            continue
        for name, lazy in deps:
            if lazy and name.startswith("latentserve") and not name.startswith(LAZY_OK):
                wrong.append(f"{m} -> {name}")
    assert not wrong, "imports of the package inside functions (move them to the top):\n" + "\n".join(wrong)
