"""README.md and docs/*.md: generated where they can be, every example runs.

* The compatibility table and the server coverage line are generated from
  the release table (``python tools/compat_table.py --write``).
* The demo and doctor samples are those commands' output
  (``python tools/readme_samples.py --write``).
* Each generated block may sit on any page (``tools.doc_pages``), on exactly
  one; the tools write it where it is.
* Every fenced ``python`` block of every page runs in a fresh interpreter
  against the tiny checkpoint. A block that is not a whole program says so on
  its first line, visibly: ``# continues ...`` runs after the most recent whole
  program of the same page, ``# test_xxx.py ...`` is written to that file and
  run with pytest. The test counts each kind and fails on a block it cannot
  classify or run.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
import importlib.util
import inspect
import os
import pathlib
import re
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from tools.compat_table import (
    markdown_table,
    readme_section,
    replace_readme_section,
    replace_server_section,
    server_section,
)
from tools.doc_pages import README, ROOT, page_with, pages
from tools.matrix import EXPECTED, Expected, Install

FIX = "run `python tools/compat_table.py --write` and commit the page"


def _name(page: pathlib.Path) -> str:
    return str(page.relative_to(ROOT))


def test_readme_compatibility_table_is_up_to_date() -> None:
    """The table and the "Tested in CI" line are exactly what the table makes."""
    page = page_with("<!-- compat-table -->")
    text = page.read_text(encoding="utf-8")
    assert readme_section() in text, f"{_name(page)}'s table is out of date: {FIX}"
    assert replace_readme_section(text) == text, FIX


def test_every_range_has_a_row_that_says_what_ci_ran() -> None:
    """One row per range; each says which releases CI ran, or plainly that none."""
    rows = markdown_table().splitlines()[2:]
    assert len(rows) == len(EXPECTED)
    for row, release in zip(rows, EXPECTED, strict=True):
        tested = row.rstrip(" |").rsplit(" | ", 1)[-1]
        if release.tested:
            assert all(v in tested for v in release.tested), row
            assert "checkpoint" in tested, row
        else:
            assert tested.startswith("not tested in CI"), row


# ------------------------------------------------ generated text, not pasted


def test_readme_server_coverage_is_generated_from_the_table() -> None:
    """What the docs say CI runs of the server is what the noxfile runs."""
    page = page_with("<!-- server-coverage -->")
    text = page.read_text(encoding="utf-8")
    assert server_section() in text, f"{_name(page)}'s server coverage is stale: {FIX}"
    assert replace_server_section(text) == text, FIX


def test_a_generated_block_is_found_on_one_page_only(tmp_path: pathlib.Path) -> None:
    """Two copies of a generated block would let one go stale unseen."""
    from tools import doc_pages

    for marker in ("<!-- compat-table -->", "<!-- server-coverage -->"):
        assert page_with(marker) in pages()
    with pytest.raises(LookupError, match="no page"):
        page_with("<!-- no-such-marker -->")
    copy = tmp_path / "docs"
    copy.mkdir()
    (copy / "a.md").write_text("<!-- compat-table -->\n")
    (copy / "b.md").write_text("<!-- compat-table -->\n")
    old = doc_pages.README, doc_pages.DOCS
    doc_pages.README, doc_pages.DOCS = copy / "a.md", copy
    try:
        with pytest.raises(LookupError, match="exactly one page"):
            doc_pages.page_with("<!-- compat-table -->")
    finally:
        doc_pages.README, doc_pages.DOCS = old


# ------------------------------------------------ the README is a reference

#: The README's top-level sections, in this order: set-up first, then the
#: contents, then what a user needs; the depth lives in docs/*.md.
SECTIONS = ["Set-up: two commands", "Contents", "What it fixes", "Usage"]
SECTIONS += ["Configuration", "FAQ"]
#: A guideline more than a cap: past it, move depth into docs/.
README_LINES = 400


def test_the_readme_is_a_short_reference_in_its_order() -> None:
    text = README.read_text(encoding="utf-8")
    assert re.findall(r"^## (.+)$", text, re.M) == SECTIONS
    lines = text.count("\n")
    assert lines <= README_LINES, f"README.md has {lines} lines: move depth to docs/"
    assert text.index("<!-- test-command -->") < text.index("## Contents")


def test_the_contents_link_every_docs_page() -> None:
    """A page the contents do not name is a page nobody finds."""
    text = README.read_text(encoding="utf-8")
    contents = text[text.index("## Contents") : text.index("## What it fixes")]
    for page in pages()[1:]:
        assert f"(docs/{page.name})" in contents, page.name


def _configuration_table() -> str:
    text = README.read_text(encoding="utf-8")
    return text[text.index("## Configuration") : text.index("## FAQ")]


def test_the_configuration_table_has_every_setting() -> None:
    """Every ``configure()`` name and every environment variable has a row."""
    import mlx_vlm_safe

    known = list(inspect.signature(mlx_vlm_safe.configure).parameters)
    assert "attempts" in known
    rows = [ln for ln in _configuration_table().splitlines() if ln.startswith("| ")]
    names = {ln.split("|")[1].strip().strip("`") for ln in rows}
    assert set(known) <= names, sorted(set(known) - names)
    source = "\n".join(
        p.read_text(encoding="utf-8") for p in (ROOT / "mlx_vlm_safe").rglob("*.py")
    )
    variables = set(re.findall(r"MLX_VLM_SAFE_[A-Z_]*[A-Z]\b", source))
    retry = ROOT / "mlx_vlm_safe" / "_retry" / "_policy.py"
    suffixes = re.findall(r'^\s+"([A-Z_]+)": \("', retry.read_text(), re.M)
    assert suffixes, "the retry variables are no longer found where expected"
    variables |= {f"MLX_VLM_SAFE_RETRY_{suffix}" for suffix in suffixes}
    table = _configuration_table()
    missing = sorted(v for v in variables if f"`{v}`" not in table)
    assert not missing, f"README's Configuration table lacks {missing}"


_BENCH = re.compile(
    r"<!-- bench-overhead: (?P<version>\S+) -->\n```text\n(?P<body>.*?)\n```\n"
    r"<!-- /bench-overhead -->",
    re.S,
)


def test_the_cost_figures_are_the_benchmarks_own_output() -> None:
    """docs/costs.md prints what ``bench_overhead.py --write`` put there.

    The figures vary from run to run, so they are not compared; what is
    checked is that each block is a whole report of the release it is filed
    under, not a hand-edited paste.
    """
    text = (ROOT / "docs" / "costs.md").read_text(encoding="utf-8")
    blocks = {m["version"]: m["body"] for m in _BENCH.finditer(text)}
    assert text.count("<!-- bench-overhead: ") == len(blocks), "an empty block"
    assert {"0.3.5", "0.7.10"} <= set(blocks), blocks.keys()
    for version, body in blocks.items():
        assert body.startswith(f"overhead benchmark: mlx-vlm {version}, "), version
        for section in ("\n1. end to end", "\n2. per call", "\n3. import", "\n4. "):
            assert section in body, (version, section)
        assert "\nmisses: " in body, version


def test_readme_coverage_line_is_generated_from_the_noxfile() -> None:
    """The Pythons and environments the README names are the noxfile's."""
    from tools import coverage_line

    text = README.read_text(encoding="utf-8")
    line = coverage_line.readme_line()
    assert coverage_line.section(line) in text, (
        "README.md's coverage line is stale: run `python tools/coverage_line.py "
        "--write`"
    )
    envs = coverage_line.load_noxfile().ENVIRONMENTS
    assert line.startswith(
        f"Tested on Python 3.10\N{EN DASH}3.13, in {len(envs)} mlx-vlm environments"
    )


def test_the_coverage_line_follows_the_environments() -> None:
    """It can fail: another environment or Python changes the line."""
    from tools import coverage_line

    env = dataclasses.make_dataclass("Env", ["python"])
    envs = {"0.3.5": env("3.11"), "0.1.27": env("3.12"), "0.3.5-py3.10": env("3.10")}
    envs |= {"0.3.5-mlx0.29.3": env("3.11"), "latest": env("3.11")}
    assert coverage_line.coverage_line(envs, "3.11") == (
        "Tested on Python 3.10\N{EN DASH}3.12, in 5 mlx-vlm environments "
        "(`nox -l`): 2 mlx-vlm releases (0.1.27\N{EN DASH}0.3.5) on Python 3.11 "
        "(3.12 for 0.1.27); "
        "0.3.5 also on Python 3.10; 1 on an older mlx; 1 more: latest."
    )


def _samples_tool() -> Any:
    path = ROOT / "tools" / "readme_samples.py"
    spec = importlib.util.spec_from_file_location("_readme_samples", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: Sample lines that carry the version of a package the README does not pin
#: for users (CI pins mlx and transformers, wrapt floats): compared in form.
_FLOATING = re.compile(r"^  (mlx|transformers|wrapt) +\S")


@pytest.mark.subprocess
@pytest.mark.model
def test_readme_samples_are_what_the_commands_print(
    mlx_vlm: Any, install: Install
) -> None:
    """The demo and doctor samples are the commands' output, not a paste.

    In full where they were taken (upstream mlx-vlm 0.3.5, installed); on
    other releases the demo's calls and legend and doctor's sections match.
    Regenerate with ``python tools/readme_samples.py --write``.
    """
    tool = _samples_tool()
    on_pages = tool.samples_on_pages()
    assert set(on_pages) == set(tool.COMMANDS)
    assert all(len(copies) == 1 for copies in on_pages.values()), on_pages.keys()
    in_readme = {name: copies[0][1] for name, copies in on_pages.items()}
    exact = (
        mlx_vlm.__version__ == tool.RELEASE
        and install.name == "upstream"
        and importlib.util.find_spec("_mlx_vlm_safe_autopatch") is not None
    )
    for name in tool.COMMANDS:
        made = tool.sample(name)
        if exact:
            mine = [ln for ln in made.splitlines() if not _FLOATING.match(ln)]
            theirs = [
                ln for ln in in_readme[name].splitlines() if not _FLOATING.match(ln)
            ]
            if tool.device() != "cpu":  # the device's name re-wraps paragraphs
                mine, theirs = " ".join(mine).split(), " ".join(theirs).split()
            assert mine == theirs, (
                f"{_name(on_pages[name][0][0])}'s {name} sample is stale: run `python "
                f"tools/readme_samples.py --write`\n{made}"
            )
        else:  # the same shape: the first word of each unindented line
            assert _heads(made) == _heads(in_readme[name]), made


def _heads(text: str) -> list[str]:
    """Row titles and section names: what does not depend on the release."""
    return [re.split(r"[\s:,]", ln)[0] for ln in text.splitlines() if ln[:1].isalpha()]


# ------------------------------------------------ every Python example runs

_FENCE = re.compile(
    r"^(?P<indent> *)```python *\n(?P<body>.*?)^(?P=indent)``` *$", re.M | re.S
)
#: First line of a block that is not a whole program: the block runs after
#: the whole one it names (see ``examples``).
CONTINUES = "# continues "
#: First line of a block that is a pytest test file: written there and run.
PYTEST_FILE = re.compile(r"^# (test_\w+\.py)\b")


@dataclasses.dataclass(frozen=True)
class Example:
    """One python block of a documentation page, as the suite runs it."""

    line: int
    kind: str  # "program", "continuation" or "pytest"
    code: str  # what runs (a continuation: its whole program first)
    filename: str = ""


_HEADING = re.compile(r"^#{2,4} (.+)$", re.M)
_CONTINUES = re.compile(r"^# continues the (?:(?P<name>.+?) example\b|example above)")


def examples(readme: str) -> list[Example]:
    """Every fenced python block of ``readme``, classified; none left out.

    ``# continues the example above`` runs after the most recent whole
    program; ``# continues the NAME example`` after the most recent one under
    a heading that contains NAME.
    """
    found: list[Example] = []
    programs: list[tuple[str, str]] = []  # (heading, code)
    for match in _FENCE.finditer(readme):
        line = readme.count("\n", 0, match.start()) + 1
        headings = _HEADING.findall(readme, 0, match.start())
        heading = headings[-1] if headings else ""
        code = textwrap.dedent(
            "\n".join(ln[len(match["indent"]) :] for ln in match["body"].splitlines())
        )
        first = code.splitlines()[0] if code.strip() else ""
        pytest_file = PYTEST_FILE.match(first)
        continues = _CONTINUES.match(first)
        if pytest_file:
            found.append(Example(line, "pytest", code, pytest_file[1]))
        elif first.startswith(CONTINUES):
            assert continues, f"line {line}: say which example: {first!r}"
            name = continues["name"]
            base = [c for h, c in programs if name is None or name in h]
            assert base, f"line {line}: no {name or 'earlier'} example"
            found.append(Example(line, "continuation", base[-1] + "\n" + code))
        else:
            programs.append((heading, code))
            found.append(Example(line, "program", code))
    return found


def run_example(
    example: Example, workdir: pathlib.Path
) -> subprocess.CompletedProcess[str]:
    """Run one example in a fresh interpreter, against the tiny checkpoint."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLX_VLM_SAFE_")}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), env.get("PYTHONPATH")) if p
    )
    env["MLX_VLM_SAFE_CACHE"] = str(workdir / "cache")
    if example.kind == "pytest":
        (workdir / example.filename).write_text(example.code)
        plugin = any(
            ep.name == "mlx_vlm_safe" for ep in md.entry_points(group="pytest11")
        )
        args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", example.filename]
        if not plugin:  # a PYTHONPATH checkout: load the plugin by its module
            args[1:1] = ["-p", "_mlx_vlm_safe_pytest"]
            env["PYTHONPATH"] += os.pathsep + str(ROOT / "mlx_vlm_safe" / "_bootstrap")
        argv = [sys.executable, *args]
    else:
        argv = [sys.executable, "-c", example.code]
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env=env,
        cwd=workdir,
        timeout=300,
        check=False,
    )


def test_the_pages_are_readme_and_docs() -> None:
    """The set the suite runs is README.md and every docs/*.md, nothing less."""
    found = pages()
    assert found[0] == README
    assert set(found[1:]) == set((ROOT / "docs").glob("*.md"))
    assert len(found) > 1, "no docs/*.md: the examples there would go unchecked"


@pytest.mark.parametrize("page", pages(), ids=_name)
def test_every_python_block_is_classified(page: pathlib.Path) -> None:
    text = page.read_text(encoding="utf-8")
    fences = len(re.findall(r"^ *```python *$", text, re.M))
    assert len(examples(text)) == fences  # nothing is left out


def test_the_pages_hold_every_kind_of_example() -> None:
    kinds = [e.kind for p in pages() for e in examples(p.read_text("utf-8"))]
    assert kinds.count("program") >= 2, kinds
    assert {"program", "continuation", "pytest"} <= set(kinds), kinds


@pytest.mark.subprocess
@pytest.mark.model
def test_every_readme_python_example_runs_as_written(
    release: Expected, tmp_path: pathlib.Path
) -> None:
    """Each block runs in a fresh interpreter; continuations after their program."""
    if release.shape != "result":
        pytest.skip(
            f"the examples are written for 0.3+; this release returns {release.shape}"
        )
    failures, counts = [], {"program": 0, "continuation": 0, "pytest": 0}
    for page in pages():
        for example in examples(page.read_text(encoding="utf-8")):
            workdir = tmp_path / f"{page.stem}-line-{example.line}"
            workdir.mkdir()
            proc = run_example(example, workdir)
            counts[example.kind] += 1
            if proc.returncode != 0:
                failures.append(
                    f"{_name(page)} line {example.line} ({example.kind}) exited "
                    f"{proc.returncode}:\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}"
                )
    print(f"examples run (README.md and docs/*.md): {counts}")
    assert not failures, "\n\n".join(failures)


def test_a_broken_example_fails(tmp_path: pathlib.Path) -> None:
    """The harness itself: a stale example is a failure, not a pass."""
    broken = "```python\nimport mlx_vlm_safe\nmlx_vlm_safe.no_such_api()\n```\n"
    follow = "```python\n# continues the example above\nprint(undefined_name)\n```\n"
    good = "```python\nimport mlx_vlm_safe\nprint(mlx_vlm_safe.is_patched())\n```\n"
    found = examples(broken + follow + good)
    assert [e.kind for e in found] == ["program", "continuation", "program"]
    codes = []
    for i, example in enumerate(found):
        (tmp_path / str(i)).mkdir()
        codes.append(run_example(example, tmp_path / str(i)).returncode)
    assert [code != 0 for code in codes] == [True, True, False], codes


def test_samples_taken_on_another_device_read_as_the_cpu_ones() -> None:
    """On CUDA the suite checks the README's CPU samples as on CPU."""
    tool = _samples_tool()
    cuda = (
        "mlx-vlm 0.3.5 on cuda: thread_stream=bound_to_importing_thread\n"
        "  mlx           0.32.4 (mlx-cuda-12 0.32.4)\n"
        "  device        cuda\n"
        "  thread_stream bound_to_importing_thread RuntimeError: There is no "
        "Stream(gpu, 1) in current thread.\n"
    )
    assert tool.as_on_cpu(cuda, "cuda") == (
        "mlx-vlm 0.3.5 on cpu: thread_stream=bound_to_importing_thread\n"
        "  mlx           0.32.4 (mlx-cpu 0.32.4)\n"
        "  device        cpu\n"
        "  thread_stream bound_to_importing_thread RuntimeError: There is no "
        "Stream(cpu, 0) in current thread.\n"
    )
    assert tool.as_on_cpu(cuda, "cpu") == cuda
