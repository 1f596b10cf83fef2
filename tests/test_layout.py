"""The package's shape: parts, faces, no import cycles, small modules.

Read from the source with ``ast`` (every import counts: module level, inside
functions, under ``TYPE_CHECKING``), so a cycle or a reach into another part's
private module fails here before it can bite at run time. Run alone with
``pytest tests/test_layout.py``.
"""

from __future__ import annotations

import ast
import pathlib
import re
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
#: Modules are sized by concept, not by count: about 500 lines is the
#: guideline (split where the concept splits, not to get under a number); past
#: 500 a module holds more than one concept, and the test fails.
MAX_LINES = 500
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


#: Names of what the patch targets; the engine's source holds none of them,
#: in code, strings or comments (its own package name aside). The patch tells
#: it what it needs (``_patch/_retry_rules.py``).
_TARGET_NAMES = re.compile(r"mlx(?!_vlm_safe)|metal|cuda|max_tokens", re.IGNORECASE)
#: The shared modules the engine may use: logging, and the registry of
#: ``MLX_VLM_SAFE_*`` variables its policy's variables are checked through.
_ENGINE_SHARED = {"mlx_vlm_safe._log", "mlx_vlm_safe._env"}


def test_the_retry_engine_knows_nothing_of_mlx_vlm() -> None:
    engine = [m for m in MODULES if _part(m) == "_retry"]
    assert len(engine) > 5
    for module in engine:
        text = MODULES[module].read_text()
        named = sorted({m.group(0) for m in _TARGET_NAMES.finditer(text)})
        assert named == [], f"{module} names {named}"
        assert {_part(t) for t in GRAPH[module]} <= {"", "_retry"}, module
        shared = {t for t in GRAPH[module] if not _part(t)}
        assert shared <= _ENGINE_SHARED, module


def test_the_name_check_sees_names_anywhere() -> None:
    """It can fail: a docstring, a string or an identifier all count."""
    for text in ('"""On Metal."""', 'x = "mlx_vlm"', "max_tokens = 1", "# CUDA"):
        assert _TARGET_NAMES.search(text), text
    assert not _TARGET_NAMES.search('log = "mlx_vlm_safe"; MLX_VLM_SAFE_X = 1')


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_longer_than_the_limit(module: str) -> None:
    """~500 lines is a guideline (CONTRIBUTING.md); past 500 this fails."""
    lines = MODULES[module].read_text().count("\n")
    assert lines <= MAX_LINES, (
        f"{module}: {lines} lines; split it where its concepts split"
    )


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


#: The stages of the patch (``mlx_vlm_safe._patch``), earliest first. A module
#: imports modules of its own stage or of an earlier one, never of a later one:
#: the data flows locate -> probe -> plan -> install -> report, and what runs
#: on every call (the wrappers and what they use) is built before the probes
#: and the fixes, which construct it. A new module must be placed here.
PATCH_STAGES: tuple[tuple[str, ...], ...] = (
    ("_mlx", "_report", "_inventory"),  # the mlx handle, the report's values
    ("_locate",),  # find the release's objects
    (  # what runs on every call; the fixes and the probes build on it
        "_results",
        "_deadlines",
        "_calls",
        "_behaviour",
        "_thread_exit",
        "_memory",
        "_retry_rules",
        "_retry_wiring",
        "_variables",
        "_wrappers",
        "_server_threads",  # stops mlx-vlm's own server threads at exit
        "_shutdown",  # cancel_all() and the exit hook
    ),
    ("_probes",),  # the generate path's probes, and the runner of every probe
    ("_fixes",),  # one module per fix: its probe, FixSpec, builder, layer
    ("_plan",),  # FIXES + verdicts -> the replacements
    ("_registry",),  # install and restore them by identity
    ("_api",),  # patch(), unpatch(), report()
)
_PATCH = f"{NAME}._patch"


def _stage(module: str) -> int | None:
    """The stage of a module of ``_patch`` (its face has none: it sees all)."""
    top = module.removeprefix(_PATCH + ".").split(".")[0]
    return next((i for i, names in enumerate(PATCH_STAGES) if top in names), None)


def _back_edges(graph: dict[str, set[str]]) -> list[str]:
    """``_patch`` imports that reach into a later stage than the importer's."""
    wrong = []
    for module, targets in graph.items():
        if not module.startswith(_PATCH + ".") or _stage(module) is None:
            continue
        for target in targets:
            if not target.startswith(_PATCH + "."):
                continue
            if (_stage(target) or 0) > (_stage(module) or 0):
                wrong.append(f"{module} -> {target}")
    return sorted(wrong)


def test_every_patch_module_has_a_stage() -> None:
    unplaced = [m for m in MODULES if m.startswith(_PATCH + ".") and _stage(m) is None]
    assert unplaced == [], "place these in PATCH_STAGES"


def test_the_patch_imports_no_later_stage() -> None:
    assert _back_edges(GRAPH) == []


def test_the_stage_check_sees_a_back_edge() -> None:
    """The check can fail: a probe importing a fix is a back edge."""
    probes, fix = f"{_PATCH}._probes", f"{_PATCH}._fixes._wired_limit"
    graph = {**GRAPH, probes: GRAPH[probes] | {fix}}
    assert _back_edges(graph) == [f"{probes} -> {fix}"]


def _declared_version() -> str:
    pyproject = (PACKAGE.parent / "pyproject.toml").read_text()
    declared = re.search(r'^version = "([^"]+)"$', pyproject, re.MULTILINE)
    assert declared is not None
    return declared[1]


def test_version_is_the_one_pyproject_declares() -> None:
    assert mlx_vlm_safe.__version__ == _declared_version()
    assert "__version__" in dir(mlx_vlm_safe)


@pytest.mark.subprocess
def test_version_is_read_only_when_asked() -> None:
    """``importlib.metadata`` costs more than the package: not on import."""
    code = (
        "import sys, mlx_vlm_safe\n"
        "before = 'importlib.metadata' in sys.modules\n"
        "print(before, mlx_vlm_safe.__version__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", _declared_version()]
