"""The package's shape: parts, faces, no import cycles, small modules.

Read from the source with ``ast`` (every import counts: module level, inside
functions, under ``TYPE_CHECKING``), so a cycle or a reach into another part's
private module fails here before it can bite at run time. Run alone with
``pytest tests/test_layout.py``.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

import mlx_vlm_safe

PACKAGE = pathlib.Path(mlx_vlm_safe.__file__).resolve().parent
NAME = "mlx_vlm_safe"
#: The parts; a module of one may import another part only through its face
#: (a package ``__init__``). Top-level modules (``_log``, ``_env`` ...) are
#: shared by all.
PARTS = ("_retry", "_patch", "_cli", "testing", "_bootstrap", "instrumentation")
#: Which part may import which (the architecture, as data).
MAY_IMPORT = {
    "_retry": set(),
    "_patch": {"_retry", "instrumentation"},
    "instrumentation": {"_retry"},
    "_cli": {"_patch", "_retry", "testing", "instrumentation"},
    "testing": {"_patch"},
    "_bootstrap": {"testing"},
}
MAX_LINES = 350
#: Modules that import an optional extra at module level, and what they need.
OPTIONAL = {
    "mlx_vlm_safe.instrumentation._otel_instrumentor": "opentelemetry.instrumentation",
}
#: Reaches into a part that are deliberate, with the reason.
EXCEPTIONS = {
    (
        "mlx_vlm_safe._bootstrap._mlx_vlm_safe_pytest",
        "mlx_vlm_safe.testing._plugin",
    ): "the pytest plugin's fixture types stay out of the public testing API",
}


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join([NAME, *parts])] = path
    return found


MODULES = _modules()


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _imports(module: str) -> set[str]:
    """Every module of the package that ``module`` imports, anywhere in it."""
    tree = ast.parse(MODULES[module].read_text())
    base = module if _is_package(module) else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base.split(".")[: len(base.split(".")) - node.level + 1]
                source = ".".join(anchor + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # ``from pkg import name``: the submodule if there is one.
            names = [
                f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source
                for a in node.names
            ]
        else:
            continue
        found |= {n for n in names if n in MODULES and n != module}
    return found


GRAPH = {module: _imports(module) for module in MODULES}


def _part(module: str) -> str:
    rest = module.split(".")[1:]
    return rest[0] if rest and rest[0] in PARTS else ""


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in GRAPH[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_cycle() -> None:
    assert _cycles() == []


def test_the_graph_sees_every_kind_of_import() -> None:
    """The check can fail: it sees relative, lazy and ``from . import`` edges."""
    assert "mlx_vlm_safe._patch" in GRAPH["mlx_vlm_safe._activate"]  # lazy
    assert "mlx_vlm_safe._env" in GRAPH["mlx_vlm_safe._activate"]
    assert (
        "mlx_vlm_safe._patch._fixes" in GRAPH["mlx_vlm_safe._patch._fixes._wired_limit"]
    )
    GRAPH["mlx_vlm_safe._env"] = {"mlx_vlm_safe._activate"}
    try:
        (cycle,) = _cycles()
        assert {"mlx_vlm_safe._activate", "mlx_vlm_safe._env"} <= set(cycle)
    finally:
        GRAPH["mlx_vlm_safe._env"] = set()


def test_parts_import_each_other_only_through_their_faces() -> None:
    wrong = []
    for module, targets in GRAPH.items():
        mine = _part(module)
        for target in targets:
            theirs = _part(target)
            if not theirs or theirs == mine or (module, target) in EXCEPTIONS:
                continue
            if theirs not in MAY_IMPORT.get(mine, {theirs}) and mine:
                wrong.append(f"{module} -> {target} (part not allowed)")
            elif not _is_package(target):
                wrong.append(f"{module} -> {target} (not a face)")
    assert wrong == []


def test_the_retry_engine_knows_nothing_of_mlx_vlm() -> None:
    engine = [m for m in MODULES if _part(m) == "_retry"]
    for module in engine:
        text = MODULES[module].read_text()
        assert "import mlx" not in text, module
        assert {_part(t) for t in GRAPH[module]} <= {"", "_retry"}, module


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_longer_than_the_limit(module: str) -> None:
    lines = MODULES[module].read_text().count("\n")
    assert lines <= MAX_LINES, f"{module}: {lines} lines"


def test_the_public_names_are_listed_once_and_typed_alike() -> None:
    """``_PUBLIC`` is the list; the ``TYPE_CHECKING`` block must repeat it."""
    tree = ast.parse(MODULES[NAME].read_text())
    typed = {
        alias.asname
        for node in ast.walk(tree)
        if isinstance(node, ast.If)
        and getattr(node.test, "id", None) == "TYPE_CHECKING"
        for stmt in node.body
        if isinstance(stmt, ast.ImportFrom) and stmt.module != "typing"
        for alias in stmt.names
    }
    assert typed == set(mlx_vlm_safe.__all__)
    listed = [n for names in mlx_vlm_safe._PUBLIC.values() for n in names]
    assert len(listed) == len(set(listed))
    for name in mlx_vlm_safe.__all__:
        assert getattr(mlx_vlm_safe, name) is not None


@pytest.mark.subprocess
def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    """No module depends on another having been imported first."""
    code = (
        "import importlib, importlib.util, sys\n"
        "SKIP = ('mlx_vlm_safe._bootstrap.', 'mlx_vlm_safe.__main__')\n"
        f"for name in {sorted(MODULES)!r}:\n"
        "    if name.startswith(SKIP):\n"
        "        continue\n"
        f"    needs = {OPTIONAL!r}.get(name)\n"
        "    if needs and importlib.util.find_spec(needs) is None:\n"
        "        continue  # an optional extra, not installed here\n"
        "    for loaded in [m for m in sys.modules if m.startswith('mlx_vlm_safe')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_start_up_hook_spells_booleans_as_the_package_does() -> None:
    """The one copy that cannot import ``_env`` (see its docstring) agrees with it."""
    import importlib

    from mlx_vlm_safe import _env

    boot = importlib.import_module("mlx_vlm_safe._bootstrap._mlx_vlm_safe_autopatch")
    assert (boot.TRUE, boot.FALSE) == (_env._TRUE, _env._FALSE)
    assert boot.VARIABLE == _env.AUTOPATCH
