"""The compatibility table and the server coverage line, generated.

``python tools/compat_table.py`` prints both; ``--write`` puts each into the
documentation page that holds its markers (``docs/releases.md`` today; any
page of ``tools.doc_pages`` will do); ``tests/e2e/test_readme.py`` checks that
the page holds what this makes. The data: the runtime table
(``mlx_vlm_safe/_releases.py``), what CI runs (``tools/matrix.py``), and the
fixes' own specs (``mlx_vlm_safe._patch.FIXES``: the reason ``report()`` and
``doctor`` show is the one the docs show).
"""

from __future__ import annotations

import pathlib
import sys

if not __package__:  # run as a script: make ``tools`` importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from mlx_vlm_safe._patch import FIXES
from tools.doc_pages import page_with
from tools.matrix import (
    CPU_STREAMS_THREAD_BOUND_SINCE,
    EXPECTED,
    FRESH_INTERPRETER_ENVS,
    INSTALLS,
    MLX_AXIS,
    RESULT_ONLY_TESTS,
    SERVER_TESTS,
    STACK_MLX,
    Expected,
    server_deselected,
)

_DASH = "\N{EN DASH}"
_MARK_OPEN = "<!-- compat-table -->"
_MARK_CLOSE = "<!-- /compat-table -->"


def _tested_cell(row: Expected) -> str:
    if not row.tested:
        if not row.checkpoint:
            return (
                "not tested in CI: `generate()` takes `(image, prompt)` in the "
                "other order and drives generate_step itself, so the real-model "
                "suite does not apply; its probes and fixes were measured once, by hand"
            )
        return "not tested in CI"
    parts = []
    for version in row.tested:
        at = row.at(version)
        shim = " through a test-only load() shim" if at.has("load_shim") else ""
        if at.shipped("kwargs_dropped"):
            shim += " (without the 1,000-call soak: 256 tokens a call there)"
        parts.append(f"{version}{shim}")
    cell = ", ".join(parts) + f": real {row.checkpoint} checkpoint"
    if row.deselected():
        cell += (
            f" (returns {row.shape}: the {len(RESULT_ONLY_TESTS)} tests of "
            "test_checkpoint.py and test_plugin.py that read a GenerationResult "
            "are deselected"
            + (
                "; so is the lifecycle state machine, whose runner assumes the "
                "0.3+ API (tests/patch/test_api.py covers the lifecycle there)"
                if row.layout == "utils"
                else ""
            )
            + ")"
        )
    forks = [i for i in INSTALLS if row.contains(i.behaves_like)]
    for install in forks:
        cell += f"; {install.note}"
    return cell


def _broken_cell(row: Expected) -> str:
    defects = [
        f"{f.first}{_DASH}{f.last}: {f.note}"
        if f.first != f.last
        else f"{f.first}: {f.note}"
        for f in row.facts_in_range()
        if f.defect
    ]
    return "; ".join([row.broken, *defects])


def _range(row: Expected) -> str:
    return row.first if row.first == row.last else f"{row.first}{_DASH}{row.last}"


_BOUND = f" (mlx {CPU_STREAMS_THREAD_BOUND_SINCE}+ on CPU, 0.31.2+ on Metal)"
_THREAD_CELLS = {
    "none": f"no_stream (default stream; each thread's own{_BOUND}), else "
    "shared_by_threads",
    "import": f"bound_to_importing_thread{_BOUND}, else shared_by_threads",
    "thread_local": "any_thread (thread-local stream)",
}


_SHARED = " (older mlx, which shares streams between threads)"


def _fixes_cell(row: Expected) -> str:
    """The fixes applied, each marked where it depends on how mlx binds streams.

    Read from ``FIXES`` for both kinds of mlx, so a new fix shows up here
    without a line of its own.
    """
    bound, shared = row.fixes_on(bound=True), row.fixes_on(bound=False)
    cells = []
    for spec in FIXES:
        if spec.name in bound and spec.name in shared:
            cells.append(spec.name)
        elif spec.name in bound:
            cells.append(f"{spec.name}{_BOUND}")
        elif spec.name in shared:
            cells.append(f"{spec.name}{_SHARED}")
    return ", ".join(cells)


def markdown_table() -> str:
    """The compatibility table, one line per row of the release table."""
    lines = [
        "| mlx-vlm | layout | `wired_limit` off Metal | empty stream in "
        "`generate()` | generation stream off its thread | output that is not "
        "UTF-8 | returns | what was broken | fixes applied | tested in CI |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in EXPECTED:
        cells = [
            _range(row),
            row.layout,
            row.verdicts["wired_limit"],
            row.verdicts["empty_stream"],
            _THREAD_CELLS[row.stream],
            row.verdicts["utf8_decode"],
            row.shape,
            _broken_cell(row).replace("|", "\\|"),
            _fixes_cell(row),
            _tested_cell(row).replace("|", "\\|"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tested_line() -> str:
    """The one line after the table: every CI environment, in plain words."""
    upstream = [v for row in EXPECTED for v in row.tested]
    untested = [_range(r) for r in EXPECTED if not r.tested]
    return (
        "Tested in CI on Linux CPU, one environment each (`noxfile.py`): mlx-vlm "
        + ", ".join(upstream)
        + ", the newest release on PyPI at run time, the fork mlx-vlm-nell 0.5.1 "
        "and the 0.3.5 + fount-vlm-nell-02 co-install; every one runs the real "
        "tiny checkpoint. The tests that need a fresh interpreter (import "
        "orders, kill switch, CLI) run on "
        + ", ".join(FRESH_INTERPRETER_ENVS).replace("latest", "the newest")
        + ". Every pinned environment has mlx "
        + STACK_MLX
        + "; the mlx axis adds "
        + "; ".join(
            f"{release} on mlx {', '.join(mlxs)}" for release, mlxs in MLX_AXIS.items()
        )
        + " (0.5.0+ install only with mlx "
        + STACK_MLX
        + ": mlx-audio 0.6.2 pins it). Not tested: "
        + ", ".join(untested)
        + "."
    )


_SERVER_OPEN = "<!-- server-coverage -->"
_SERVER_CLOSE = "<!-- /server-coverage -->"


def server_line() -> str:
    """Where CI runs mlx-vlm's own server end to end, and where not and why."""
    full, partial, none, why = [], [], [], ""
    envs = [(v, row.at(v)) for row in EXPECTED for v in row.tested]
    envs += [(f"the {i.name} environment", i.release()) for i in INSTALLS]
    for name, row in envs:
        deselected = server_deselected(row)
        if not deselected:
            py312 = row.has("server_needs_py312")
            full.append(name + (" (on Python 3.12 where installed)" if py312 else ""))
        elif any(node == SERVER_TESTS[0] for node, _ in deselected):
            none.append(f"{name} ({deselected[0][1]})")
        else:
            partial.append(name)
            why = deselected[0][1]
    return (
        "`tests/e2e/test_server.py` runs each release's own server end to end in CI, "
        "with a real server and a real HTTP client, on mlx-vlm "
        + ", ".join(full)
        + " and the newest release. Only the request that succeeds runs on "
        + " and ".join(partial)
        + f" ({why}). Not at all on "
        + ", ".join(none)
        + ". Where no Python 3.12 is installed, the 0.1.26"
        + _DASH
        + "0.2.0 environments run on the installed Python without these tests "
        "(their server needs 3.12), and the run says so."
    )


def server_section() -> str:
    """The server coverage paragraph, between its markers."""
    return "\n".join([_SERVER_OPEN, server_line(), _SERVER_CLOSE])


def replace_server_section(readme: str) -> str:
    """``readme`` with its server coverage paragraph regenerated."""
    start = readme.index(_SERVER_OPEN)
    end = readme.index(_SERVER_CLOSE, start) + len(_SERVER_CLOSE)
    return readme[:start] + server_section() + readme[end:]


def fixes_legend() -> str:
    """What each fix in the table does, and which probe verdict calls for it."""
    lines = ["What each fix does (the reason `report()` and `doctor` give):", ""]
    for spec in FIXES:
        when = " and ".join(
            f"`{probe}` is {' or '.join(f'`{v}`' for v in sorted(verdicts))}"
            for probe, verdicts in spec.when.items()
        )
        where = " (inside `stream_generate`)" if spec.layer is not None else ""
        cause = f", when {when}" if when else ", always"
        upstream = (
            f" (fixed upstream in mlx-vlm {spec.fixed_upstream_in})"
            if spec.fixed_upstream_in
            else ""
        )
        lines.append(f"- `{spec.name}`{where}{cause}: {spec.reason}{upstream}.")
    return "\n".join(lines)


_TESTED = "Tested in CI on "


def readme_section() -> str:
    """Everything from the opening marker to the ``Tested in CI`` line."""
    return "\n".join(
        [
            _MARK_OPEN,
            markdown_table(),
            _MARK_CLOSE,
            "",
            fixes_legend(),
            "",
            tested_line(),
        ]
    )


def replace_readme_section(readme: str) -> str:
    """``readme`` with its table section replaced by :func:`readme_section`."""
    start = readme.index(_MARK_OPEN)
    end_of_line = readme.index("\n", readme.index(_TESTED, start))
    return readme[:start] + readme_section() + readme[end_of_line:]


def _main() -> None:  # pragma: no cover - a developer's command
    if sys.argv[1:] == ["--write"]:
        for marker, replace in (
            (_MARK_OPEN, replace_readme_section),
            (_SERVER_OPEN, replace_server_section),
        ):
            page = page_with(marker)
            page.write_text(replace(page.read_text(encoding="utf-8")), "utf-8")
    else:
        print(readme_section() + "\n\n" + server_section())


if __name__ == "__main__":  # pragma: no cover
    _main()
