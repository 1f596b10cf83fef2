"""What every known mlx-vlm release does off Metal, as data.

Strictly private; re-exported through ``doctor`` and the README table. The
patch itself never reads this table (it decides by behaviour probes); the
tests do, to check that the probes classify each real release as measured,
and so does ``doctor``, to answer operators' questions ("would pinning 0.3.4
help?"). Source: ``shared/docs/mlx-vlm-matrix.md`` (all 75 releases probed),
plus what the CI matrix (``noxfile.py``) measured with the tiny checkpoint.

Three kinds of rows:

* :data:`RELEASES`: one row per behaviour range of the generate path (layout,
  probe verdicts, result shape, fixes), with the releases CI tests in it.
* :data:`FACTS`: narrower version ranges the tests need to know about that do
  not change what the patch does (a release that ignores ``max_tokens``, one
  whose ``load()`` is broken, where an int ``repetition_penalty`` is
  rejected ...). :meth:`Release.at` attaches the ones that apply to a version.
* :data:`INSTALLS`: CI environments that are not one upstream release (a fork,
  a co-install), with what ``report()`` must say about them.

``python -m mlx_vlm_safe._releases`` prints the README compatibility table.
"""

from __future__ import annotations

import dataclasses

from packaging.version import InvalidVersion, Version

#: Every error a variant-A ``wired_limit`` raises on entry off Metal: the
#: KeyError with mlx >= 0.29 (device_info() has no such key on CPU), the
#: RuntimeError with older mlx (no device info without Metal).
ENTRY_ERROR = r"max_recommended_working_set_size|Cannot get device info"

#: The first mlx whose CPU streams belong to the thread that made them
#: (measured with 0.3.5's stream: 0.29.3, 0.31.1 and 0.31.2 share them between
#: threads, 0.32.0 and 0.32.4 do not; Metal and CUDA bind them since 0.31.2).
CPU_STREAMS_THREAD_BOUND_SINCE = "0.32.0"

#: How each kind of generation stream fares off its thread (``Release.stream``).
STREAM_KINDS = {
    "none": "generation runs on mlx's default stream, which every thread has",
    "import": "`generation_stream = mx.new_stream(...)` at import: where mlx "
    "binds streams to threads, generate() works only on the importing thread",
    "thread_local": "`mx.new_thread_local_stream(...)`: works on any thread",
}


#: The mlx every pinned CI environment has (the noxfile's STACK).
STACK_MLX = "0.32.4"

#: The mlx axis of the CI matrix: release -> the older mlx it also runs on
#: (every environment runs the newest, STACK's, too). Threads and the exit
#: depend on mlx: 0.29.3-0.31.2 share CPU streams between threads, 0.32.0
#: binds them (and aborted at exit even after ``clear_streams``). The
#: thread-local releases (0.5.0+) install only with mlx 0.32.4: they need
#: mlx-audio 0.6.2, which pins ``mlx==0.32.4``; so they run on STACK's mlx.
MLX_AXIS = {"0.3.5": ("0.29.3", "0.31.1", "0.31.2", "0.32.0")}


def streams_bound(mlx_version: str, device: str = "cpu") -> bool:
    """Whether this mlx binds streams to the thread that made them."""
    since = CPU_STREAMS_THREAD_BOUND_SINCE if device == "cpu" else "0.31.2"
    return Version(mlx_version) >= Version(since)


#: What ``generate_step`` generates when the caller's ``max_tokens`` never
#: reaches it (0.1.7-0.1.9 drop every keyword argument).
GENERATE_STEP_DEFAULT_MAX_TOKENS = 256


@dataclasses.dataclass(frozen=True)
class Fact:
    """Something a narrower version range does that the tests must expect."""

    first: str
    last: str
    name: str
    note: str
    #: Shown in the README's "what was broken" column (a defect of the release).
    defect: bool = False

    def contains(self, version: str) -> bool:
        """Whether ``version`` falls in this range (inclusive)."""
        return Version(self.first) <= Version(version) <= Version(self.last)


# fmt: off
FACTS: tuple[Fact, ...] = (
    Fact(
        "0.1.0", "0.1.14", "stream_not_exported",
        "`from mlx_vlm import stream_generate` fails; the function is "
        "`mlx_vlm.utils.stream_generate`",
    ),
    Fact(
        "0.1.7", "0.1.9", "kwargs_dropped",
        "stream_generate() drops every keyword argument (max_tokens, sampling, "
        "input_ids ...): each generation runs to generate_step's default of "
        f"{GENERATE_STEP_DEFAULT_MAX_TOKENS} tokens (fixed upstream in 0.1.10, "
        "593a5b84)",
        defect=True,
    ),
    Fact(
        "0.1.10", "0.3.11", "rejects_int_repetition_penalty",
        "an int repetition_penalty raises ValueError 'must be a non-negative "
        "float' (0.3.12 moved to mlx-lm's samplers, which accept it)",
    ),
    Fact(
        "0.1.0", "0.5.0", "max_tokens_zero_raises",
        "max_tokens=0 raises UnboundLocalError inside stream_generate (0.6.0+ "
        "returns an empty result)",
    ),
    Fact(
        "0.2.0", "0.2.0", "load_shim",
        "load() fails for every model without an audio tower "
        "(`model_class.AudioModel`, `ModelConfig.audio_config` looked up for "
        "all model types); the tests load the tiny checkpoint through a "
        "test-only shim of load() (tests/conftest.py), the generate path stays "
        "the release's own",
        defect=True,
    ),
    Fact(
        "0.1.26", "0.3.2", "server_reads_data_url_as_path",
        "the server's load_image() takes an image data URL for a file name "
        "(0.3.5 decodes it); tests/test_server.py sends these releases a "
        "local file name",
    ),
    Fact(
        "0.5.0", "0.5.0", "server_ignores_bad_params",
        "the server generates through a ResponseGenerator that takes its own "
        "defaults for everything tried (max_output_tokens=0, a str logit_bias, "
        "a str temperature, an int repetition_penalty): no request parameter "
        "is known to make its generation fail",
    ),
    Fact(
        "0.6.0", "0.6.0", "server_cannot_serve_tiny",
        "the server's chat path fails on the tiny checkpoint's processor",
    ),
    Fact(
        "0.1.26", "0.2.0", "server_needs_py312",
        "`import mlx_vlm.server` fails on Python < 3.12 (pydantic rejects "
        "typing.TypedDict); CI runs these releases on Python 3.12",
    ),
)
# fmt: on


#: Tests that need ``import mlx_vlm.server`` in the test's own interpreter:
#: where the release's server needs Python 3.12 (fact ``server_needs_py312``)
#: and CI has only an older Python, the nox session deselects them by name.
SERVER_TESTS = ("tests/test_server.py",)


#: The server tests that need a request that makes generation fail.
SERVER_TRIGGER_TESTS = (
    "tests/test_server.py::test_patched_server_fails_with_the_real_error_and_recovers",
    "tests/test_server.py::test_unpatched_server_shows_what_the_patch_fixes",
)


#: Why the server cannot serve the tiny checkpoint, by fact (see FACTS).
_SERVER_REASONS = {
    "load_shim": "its load() cannot load a model without an audio tower",
    "server_cannot_serve_tiny": "its chat path fails on the checkpoint's processor",
}


def server_deselected(row: Release) -> tuple[tuple[str, str], ...]:
    """``(test node, reason)`` of the server tests that do not apply to ``row``.

    The noxfile runs ``tests/test_server.py`` (mlx-vlm's own server end to
    end) on every environment, less these; the README's coverage line says
    the same, generated by :func:`server_line`.
    """
    if row.server == "absent":
        return ((SERVER_TESTS[0], "no mlx_vlm.server"),)
    for name, reason in _SERVER_REASONS.items():
        if row.has(name):
            return ((SERVER_TESTS[0], reason),)
    if row.has("server_ignores_bad_params"):
        reason = "no request parameter is known to make its generation fail"
        return tuple((node, reason) for node in SERVER_TRIGGER_TESTS)
    return ()


def python_deselected(row: Release, python: tuple[int, ...]) -> tuple[str, ...]:
    """Test node ids that cannot run on Python ``python`` for this row."""
    if row.has("server_needs_py312") and tuple(python[:2]) < (3, 12):
        return SERVER_TESTS
    return ()


#: Tests written against a ``GenerationResult`` (they read ``.text`` and
#: ``.generation_tokens`` off the return value of ``generate()``): they do not
#: apply where ``generate()`` returns a str (0.1.7-0.1.25) or a ``(text,
#: stats)`` tuple (0.1.26-0.2.0). The nox session deselects them there;
#: tests/test_fixes.py runs the same checkpoint through every shape.
RESULT_ONLY_TESTS = (
    "tests/test_checkpoint.py::test_real_generate_runs_exactly_to_max_tokens",
    "tests/test_checkpoint.py::test_never_stops_early",
    "tests/test_checkpoint.py::test_greedy_text_is_repeatable_within_a_release",
    # The plugin's documented example reads GenerationResult fields (0.3+).
    "tests/test_plugin.py::test_fixtures_plant_faults_into_the_tiny_model",
)

#: The lifecycle state machine's program runner assumes the 0.3+ API (calls
#: from worker threads that the 0.1.x/0.2.0 generation stream does not
#: survive); on the utils layout, test_patch.py's import-order, kill-switch and
#: thread tests cover the lifecycle instead.
UTILS_LAYOUT_TESTS = ("tests/test_lifecycle_stateful.py::TestLifecycle",)

#: Where the release drops ``max_tokens`` (0.1.7-0.1.9) every call makes 256
#: tokens: the 1,000-call soak would take over ten minutes there. It measures
#: our layers, not the release, and runs on every other environment.
NO_MAX_TOKENS_TESTS = ("tests/test_soak.py",)


@dataclasses.dataclass(frozen=True)
class Release:
    """One behaviour range of mlx-vlm releases, on a non-Metal device."""

    first: str
    last: str
    layout: str
    wired_limit: str
    empty_stream: str
    shape: str
    broken: str
    fixes: tuple[str, ...]
    #: How ``mlx_vlm.server`` binds generate: "absent", "V1", "V2", "V2+RG",
    #: "V3+RG" (see the matrix doc, section 1).
    server: str = "absent"
    #: The generation stream: "none", "import" or "thread_local" (STREAM_KINDS).
    stream: str = "none"
    #: stream_generate's detokenizer: "shared" (the processor's, up to 0.4.4)
    #: or "per_call" (0.5.0+); the ``detokenizer`` probe's verdict.
    detokenizer: str = "shared"
    #: The releases of this range the CI matrix runs (``noxfile.py``).
    tested: tuple[str, ...] = ()
    #: The checkpoint the real-model tests run in this range ("" = none).
    checkpoint: str = "tiny PaliGemma"
    #: Facts that apply to one version (set by :meth:`at`; empty on the rows).
    facts: tuple[Fact, ...] = ()

    def contains(self, version: str) -> bool:
        """Whether ``version`` falls in this range (inclusive)."""
        return Version(self.first) <= Version(version) <= Version(self.last)

    def at(self, version: str) -> Release:
        """Return the row with the :data:`FACTS` that apply to ``version``."""
        facts = tuple(f for f in FACTS if f.contains(version))
        return dataclasses.replace(self, facts=facts)

    def has(self, name: str) -> bool:
        """Whether fact ``name`` applies (only meaningful after :meth:`at`)."""
        return any(f.name == name for f in self.facts)

    def thread_verdict(self, bound: bool) -> str:
        """The ``thread_stream`` probe's verdict, given whether mlx binds streams."""
        if self.stream == "none":
            return "no_stream"
        if self.stream == "import" and bound:
            return "bound_to_importing_thread"
        return "any_thread"

    def fixes_on(self, bound: bool) -> tuple[str, ...]:
        """The fixes applied, given whether mlx binds streams to threads."""
        verdict = self.thread_verdict(bound)
        thread = ("thread_local_stream",) if verdict.startswith("bound") else ()
        private = ("private_detokenizer",) if self.detokenizer == "shared" else ()
        return thread + self.fixes + private

    @property
    def fails_on_entry(self) -> bool:
        """Whether every unpatched generation fails on entry off Metal."""
        return self.wired_limit == "fails_on_entry"

    def tokens_for(self, max_tokens: int) -> int:
        """How many tokens a call asking for ``max_tokens`` really generates.

        The tiny checkpoint never emits EOS, so that is ``max_tokens``, except
        where the release drops the caller's keyword arguments.
        """
        if self.has("kwargs_dropped"):
            return GENERATE_STEP_DEFAULT_MAX_TOKENS
        return max_tokens

    def deselected(self) -> tuple[str, ...]:
        """Test node ids that do not apply to this range (see the constants)."""
        utils = UTILS_LAYOUT_TESTS if self.layout == "utils" else ()
        slow = NO_MAX_TOKENS_TESTS if self.has("kwargs_dropped") else ()
        return (RESULT_ONLY_TESTS if self.shape != "result" else ()) + utils + slow

    def facts_in_range(self) -> tuple[Fact, ...]:
        """The :data:`FACTS` that overlap this row."""
        return tuple(
            f
            for f in FACTS
            if Version(f.first) <= Version(self.last)
            and Version(f.last) >= Version(self.first)
        )


_GENERIC = ("observed_stream", "none_safe_generate")

# fmt: off
RELEASES: tuple[Release, ...] = (
    Release(
        "0.1.0", "0.1.6", "utils", "absent", "inconclusive", "str",
        "max_tokens=0 raises UnboundLocalError; generate() bypasses the stream",
        ("never_empty_stream", "none_safe_generate"),
        checkpoint="",
    ),
    Release(
        "0.1.7", "0.1.21", "utils", "absent", "guarded", "str",
        "verbose=True with empty text returns None",
        _GENERIC,
        tested=("0.1.7",),
    ),
    Release(
        "0.1.22", "0.1.25", "utils", "fails_on_entry", "guarded", "str",
        "every generation fails on entry off Metal (wired_limit calls "
        "device_info); verbose=True with empty text returns None",
        ("generate_off_metal", *_GENERIC),
        stream="import",
        tested=("0.1.25",),
    ),
    Release(
        "0.1.26", "0.2.0", "utils", "fails_on_entry", "unguarded", "tuple",
        "every generation fails on entry off Metal; returns a (text, stats) "
        "tuple, or None with verbose=True and empty text",
        ("generate_off_metal", "never_empty_stream", "none_safe_generate"),
        server="V1",
        stream="import",
        tested=("0.1.27", "0.2.0"),
    ),
    Release(
        "0.3.0", "0.3.1", "module", "fails_on_entry", "unguarded", "result",
        "every generation fails on entry off Metal; an empty stream raises "
        "AttributeError 'NoneType' ... 'token'",
        ("generate_off_metal", "never_empty_stream", "none_safe_generate"),
        server="V2",
        stream="import",
        tested=("0.3.0", "0.3.1"),
    ),
    Release(
        "0.3.2", "0.3.10", "module", "swallows", "unguarded", "result",
        "wired_limit swallows every exception off Metal (also Ctrl-C): "
        "AttributeError 'NoneType' ... 'token', cut answers, silent empty "
        "results",
        ("propagate_errors", "never_empty_stream", "none_safe_generate"),
        server="V2",
        stream="import",
        tested=("0.3.2", "0.3.5", "0.3.10"),
    ),
    Release(
        "0.3.11", "0.4.4", "module", "propagates", "unguarded", "result",
        "generate() dereferences the last stream item unguarded",
        ("never_empty_stream", "none_safe_generate"),
        server="V2",
        stream="import",
        tested=("0.3.11", "0.4.4"),
    ),
    Release(
        "0.5.0", "0.5.0", "module", "propagates", "unguarded", "result",
        "generate() dereferences the last stream item unguarded",
        ("never_empty_stream", "none_safe_generate"),
        server="V2",
        stream="thread_local",
        detokenizer="per_call",
        tested=("0.5.0",),
    ),
    Release(
        "0.6.0", "0.7.10", "package", "propagates", "guarded", "result",
        "nothing known on the generate() path",
        _GENERIC,
        server="V3+RG",
        stream="thread_local",
        detokenizer="per_call",
        tested=("0.6.0", "0.6.17", "0.7.10"),
    ),
)
# fmt: on

#: The first release whose generate() path has none of the defects above.
FIXED_UPSTREAM_IN = "0.6.0"
#: The first release whose wired_limit lets exceptions through off Metal.
WIRED_LIMIT_FIXED_IN = "0.3.11"


def release_for(version: str | None) -> Release | None:
    """The known behaviour range of ``version``, or ``None`` if unknown."""
    if version is None:
        return None
    try:
        return next((r for r in RELEASES if r.contains(version)), None)
    except ValueError:  # not a PEP 440 version: a fork's or a local build's
        return None


@dataclasses.dataclass(frozen=True)
class Install:
    """A CI environment that is not one upstream release, and its truth."""

    name: str
    #: What is installed, in order (later installs overwrite earlier files).
    installs: tuple[str, ...]
    #: ``mlx_vlm.__version__``: the code's own word.
    version: str
    #: ``importlib.metadata.version("mlx-vlm")``; None: no such distribution.
    metadata_version: str | None
    #: Distributions that ship the ``mlx_vlm`` package.
    distributions: tuple[str, ...]
    #: The upstream release whose behaviour the code has (by its source).
    behaves_like: str
    note: str

    def release(self) -> Release:
        """The row the code behaves like, with the facts of that release."""
        row = release_for(self.behaves_like)
        if row is None:
            raise LookupError(f"{self.behaves_like} is not in RELEASES")
        return row.at(self.behaves_like)


INSTALLS: tuple[Install, ...] = (
    Install(
        "mlx-vlm-nell",
        ("mlx-vlm-nell==0.5.1",),
        version="0.5.1",
        metadata_version=None,
        distributions=("mlx-vlm-nell",),
        behaves_like="0.5.0",
        note="fork mlx-vlm-nell 0.5.1 (no upstream 0.5.1 exists): upstream "
        "0.5.0 plus model/server/sampler edits, same `mlx_vlm` package",
    ),
    Install(
        "coinstall",
        ("mlx-vlm==0.3.5", "fount-vlm-nell-02==0.3.11"),
        version="0.3.11",
        metadata_version="0.3.5",
        distributions=("fount-vlm-nell-02", "mlx-vlm"),
        behaves_like="0.3.11",
        note="co-install: mlx-vlm 0.3.5, then the fork fount-vlm-nell-02 over "
        "it; the metadata says 0.3.5 (affected), the code is 0.3.11 (fixed)",
    ),
)


#: The CI environments that also run the tests needing a fresh interpreter
#: (``-m subprocess``: import orders, the kill switch, the CLI): the affected
#: module layout with the V2 server (0.3.5) and the newest release (package
#: layout, V3 server). The others run everything else, every real-model test
#: and mlx-vlm's own server end to end (``server_deselected``) included. The
#: fresh-interpreter tests take most of a run (~4 min against ~1-1.5 min per
#: environment on two busy cores): on all 18 environments they would more
#: than double the matrix's ~14 min.
#: Run them on one more: ``nox -s "tests(0.1.27)" -- -m subprocess``.
FRESH_INTERPRETER_ENVS = ("0.3.5", "latest")


def install_named(name: str | None) -> Install | None:
    """The :data:`INSTALLS` entry called ``name``, if any."""
    return next((i for i in INSTALLS if i.name == name), None)


def expected_release(version: str, install: str | None = None) -> Release | None:
    """The row (with facts) the tests expect for this environment.

    A known fork or co-install behaves like its upstream base; a release newer
    than the table is expected to behave like the newest range (the matrix's
    ``latest`` environment exists to catch the day it does not).
    """
    known = install_named(install)
    if known is not None:
        return known.release()
    row = release_for(version)
    if row is None:
        try:
            newer = Version(version) > Version(RELEASES[-1].last)
        except InvalidVersion:
            return None
        row = RELEASES[-1] if newer else None
    return row.at(version) if row is not None else None


# ------------------------------------------------------------ the README table

_DASH = "\N{EN DASH}"
_MARK_OPEN = "<!-- compat-table -->"
_MARK_CLOSE = "<!-- /compat-table -->"


def _tested_cell(row: Release) -> str:
    if not row.tested:
        if not row.checkpoint:
            return (
                "not tested in CI: `generate()` takes `(image, prompt)` in the "
                "other order and drives generate_step itself, so the real-model "
                "suite does not apply; probes and fixes come from the matrix doc"
            )
        return "not tested in CI"
    parts = []
    for version in row.tested:
        at = row.at(version)
        shim = " through a test-only load() shim" if at.has("load_shim") else ""
        if at.has("kwargs_dropped"):
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
                "0.3+ API (test_patch.py covers the lifecycle there)"
                if row.layout == "utils"
                else ""
            )
            + ")"
        )
    forks = [i for i in INSTALLS if row.contains(i.behaves_like)]
    for install in forks:
        cell += f"; {install.note}"
    return cell


def _broken_cell(row: Release) -> str:
    defects = [
        f"{f.first}{_DASH}{f.last}: {f.note}"
        if f.first != f.last
        else f"{f.first}: {f.note}"
        for f in row.facts_in_range()
        if f.defect
    ]
    return "; ".join([row.broken, *defects])


def _range(row: Release) -> str:
    return row.first if row.first == row.last else f"{row.first}{_DASH}{row.last}"


_BOUND = f" (mlx {CPU_STREAMS_THREAD_BOUND_SINCE}+ on CPU, 0.31.2+ on Metal)"
_THREAD_CELLS = {
    "none": "no_stream (default stream)",
    "import": f"bound_to_importing_thread{_BOUND}, else any_thread",
    "thread_local": "any_thread (thread-local stream)",
}


def markdown_table() -> str:
    """The README compatibility table, generated from :data:`RELEASES`."""
    lines = [
        "| mlx-vlm | layout | `wired_limit` off Metal | empty stream in "
        "`generate()` | generation stream off its thread | returns | what was "
        "broken | fixes applied | tested in CI |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in RELEASES:
        cells = [
            _range(row),
            row.layout,
            row.wired_limit,
            row.empty_stream,
            _THREAD_CELLS[row.stream],
            row.shape,
            _broken_cell(row).replace("|", "\\|"),
            ", ".join(row.fixes_on(bound=True)).replace(
                "thread_local_stream", f"thread_local_stream{_BOUND}"
            ),
            _tested_cell(row).replace("|", "\\|"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tested_line() -> str:
    """The one line after the table: every CI environment, in plain words."""
    upstream = [v for row in RELEASES for v in row.tested]
    untested = [_range(r) for r in RELEASES if not r.tested]
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
    envs = [(v, row.at(v)) for row in RELEASES for v in row.tested]
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
        "`tests/test_server.py` runs each release's own server end to end in CI, "
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
    """The README's server coverage paragraph, between its markers."""
    return "\n".join([_SERVER_OPEN, server_line(), _SERVER_CLOSE])


def replace_server_section(readme: str) -> str:
    """``readme`` with its server coverage paragraph regenerated."""
    start = readme.index(_SERVER_OPEN)
    end = readme.index(_SERVER_CLOSE, start) + len(_SERVER_CLOSE)
    return readme[:start] + server_section() + readme[end:]


def readme_section() -> str:
    """Everything from the opening marker to the ``Tested in CI`` line."""
    return "\n".join([_MARK_OPEN, markdown_table(), _MARK_CLOSE, "", tested_line()])


def replace_readme_section(readme: str) -> str:
    """``readme`` with its table section replaced by :func:`readme_section`."""
    start = readme.index(_MARK_OPEN)
    close = readme.index(_MARK_CLOSE, start)
    end_of_line = readme.index("\n", readme.index("\n\n", close) + 2)
    return readme[:start] + readme_section() + readme[end_of_line:]


def _main() -> None:  # pragma: no cover - a developer's command
    import pathlib
    import sys

    if sys.argv[1:] == ["--write"]:
        path = pathlib.Path("README.md")
        text = replace_readme_section(path.read_text())
        path.write_text(replace_server_section(text))
    else:
        print(readme_section() + "\n\n" + server_section())


if __name__ == "__main__":  # pragma: no cover
    _main()
