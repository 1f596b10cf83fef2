"""What the tests and CI expect of each mlx-vlm environment, as data.

The runtime table (``mlx_vlm_safe/_releases.py``, shipped in the wheel) says
what each behaviour range of the generate path does. This module adds what
only the tests and CI need, without repeating any of it:

* :data:`EXPECTED`: each runtime row as an :class:`Expected`, with the
  releases of its range that CI runs and the checkpoint the real-model tests
  use there. :meth:`Expected.at` attaches the facts of one version.
* :data:`FACTS`: narrower version ranges the tests need to know about that do
  not change what the patch does (a release that ignores ``max_tokens``, one
  whose ``load()`` is broken, where an int ``repetition_penalty`` is
  rejected ...).
* :data:`INSTALLS`: CI environments that are not one upstream release (a fork,
  a co-install), with what ``report()`` must say about them.
* The test node ids that do not apply to an environment (the noxfile
  deselects them) and the mlx axis of the CI matrix.

Sources: the behaviour of every release from 0.1.0 to 0.7.10 (75 releases)
was measured once, by hand, with the probes; the rows CI runs are measured
again by the suite on every run (``noxfile.py``, one environment per
release), so a fact that stops holding fails there. The tests
import this as ``tools.matrix`` (pytest's ``pythonpath``); ``noxfile.py``
loads it by path; ``tools/compat_table.py`` makes the README table from it.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys

from packaging.version import InvalidVersion, Version

# The runtime table, imported as what it is (``mlx_vlm_safe._releases``), not
# loaded by path: so a test process has one ``Release`` class, whichever of
# the tests and this module imports it first. The checkout's own copy: the
# tests have the repository root first on sys.path already (pytest's
# ``pythonpath``); nox, which loads this file by path, may have none or another
# copy installed, so the root goes first. Importing the package in nox is
# harmless: it only installs a meta_path finder that acts when ``mlx_vlm`` is
# imported, which nox never does.
ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mlx_vlm_safe._patch import FIXES  # noqa: E402
from mlx_vlm_safe._releases import RELEASES, Release  # noqa: E402

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
MLX_AXIS = {
    "0.3.5": ("0.29.3", "0.31.1", "0.31.2", "0.32.0"),
    # mlx's default stream, shared by threads there (serialized_steps)
    "0.1.7": ("0.29.3",),
}


#: The Python axis of the CI matrix: release -> the other Pythons it also runs
#: on (every environment runs 3.11, or 3.12 where the noxfile says why): the
#: oldest release in common use and the newest, on the oldest Python the
#: package supports (3.10: what ``python:3.10`` images run) and the newest
#: that mlx 0.32.4 has wheels for (3.13). Where such a Python is not
#: installed, its environment is skipped, never downloaded.
PYTHON_AXIS = {
    "0.3.5": ("3.10", "3.13"),
    "0.7.10": ("3.10", "3.13"),
}


def mlx_device() -> str:
    """The device the installed mlx runs on: ``"cuda"``, ``"metal"`` or ``"cpu"``.

    Asked of mlx itself (not of the library, whose own answer the tests check),
    so that what the tests expect follows the machine: CI is Linux CPU, and
    the same suite runs on a CUDA box.
    """
    import mlx.core as mx

    for name in ("cuda", "metal"):
        backend = getattr(mx, name, None)
        if backend is not None and backend.is_available():
            return name
    return "cpu"


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
    #: The fix (``FixSpec.name``) that repairs it: where the release table's
    #: verdicts call for that fix, patched calls no longer show it
    #: (:meth:`Expected.has`); the release alone still does
    #: (:meth:`Expected.shipped`). A name not in ``FIXES`` repairs nothing.
    fixed_by: str = ""

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
        fixed_by="pass_caller_kwargs",
    ),
    Fact(
        "0.1.7", "0.3.11", "rejects_int_repetition_penalty",
        "an int repetition_penalty raises ValueError 'must be a non-negative "
        "float' (0.3.12 moved to mlx-lm's samplers, which accept it; 0.1.7-0.1.9 "
        "only where the keyword reaches generate_step)",
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
        "(0.3.5 decodes it); tests/e2e/test_server.py sends these releases a "
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
SERVER_TESTS = ("tests/e2e/test_server.py",)


#: The server tests that need a request that makes generation fail.
SERVER_TRIGGER_TESTS = (
    "tests/e2e/test_server.py::test_patched_server_fails_with_the_real_error_and_recovers",
    "tests/e2e/test_server.py::test_unpatched_server_shows_what_the_patch_fixes",
)


#: Why the server cannot serve the tiny checkpoint, by fact (see FACTS).
_SERVER_REASONS = {
    "load_shim": "its load() cannot load a model without an audio tower",
    "server_cannot_serve_tiny": "its chat path fails on the checkpoint's processor",
}


#: Tests written against a ``GenerationResult`` (they read ``.text`` and
#: ``.generation_tokens`` off the return value of ``generate()``): they do not
#: apply where ``generate()`` returns a str (0.1.7-0.1.25) or a ``(text,
#: stats)`` tuple (0.1.26-0.2.0). The nox session deselects them there;
#: tests/patch/test_fixes.py runs the same checkpoint through every shape.
RESULT_ONLY_TESTS = (
    "tests/testing/test_checkpoint.py::test_real_generate_runs_exactly_to_max_tokens",
    "tests/testing/test_checkpoint.py::test_never_stops_early",
    "tests/testing/test_checkpoint.py::test_greedy_text_is_repeatable_within_a_release",
    # The plugin's documented example reads GenerationResult fields (0.3+).
    "tests/testing/test_plugin.py::test_fixtures_plant_faults_into_the_tiny_model",
)

#: The lifecycle state machine's program runner assumes the 0.3+ API (calls
#: from worker threads that the 0.1.x/0.2.0 generation stream does not
#: survive); on the utils layout, tests/patch/test_api.py's import-order,
#: kill-switch and thread tests cover the lifecycle instead.
UTILS_LAYOUT_TESTS = ("tests/patch/test_lifecycle_stateful.py::TestLifecycle",)

#: Where a call drops ``max_tokens`` (0.1.7-0.1.9 without ``pass_caller_kwargs``)
#: every call makes 256 tokens: the 1,000-call soak would take over ten minutes
#: there. Deselected only where the patch leaves the fact in place (patched,
#: these 13 tests pass on 0.1.7 in about a minute).
NO_MAX_TOKENS_TESTS = (
    "tests/e2e/test_soak.py",
    # Stopping a long generation (a deadline, a cancel, a closed stream, a
    # disconnected client) needs one: these releases always stop at 256.
    "tests/e2e/test_service.py::test_a_disconnected_client_stops_its_stream",
    "tests/patch/test_async.py::test_a_cancelled_consumer_task_stops_the_stream",
    "tests/patch/test_async.py::test_a_deadline_block_limits_the_worker",
    "tests/patch/test_async.py::test_astream_generate_streams_and_stops_when_left",
    "tests/patch/test_async.py::test_wait_for_stops_the_worker_within_one_token",
    "tests/patch/test_deadlines.py::test_a_long_generate_stops_at_its_deadline",
    "tests/patch/test_deadlines.py::test_a_stream_closed_early_stops_generating",
    "tests/patch/test_deadlines.py::test_a_stream_raises_after_the_items_it_yielded",
    "tests/patch/test_deadlines.py::test_cancel_all_stops_a_retry_wait_and_a_generation",
    "tests/patch/test_deadlines.py::test_the_end_of_main_cancels_generations_on_worker_threads",
)

#: ``opentelemetry-instrument`` runs an app of its own: it needs a release that
#: reads ``temperature`` (to fail one call) and a plain ``load()`` (0.2.0 needs
#: the suite's shim).
INSTRUMENTED_APP_TESTS = (
    "tests/instrumentation/test_otel_instrument.py::test_the_entry_point_patches_and_emits_spans_and_metrics",
    "tests/instrumentation/test_otel_instrument.py::test_without_the_entry_point_nothing_is_patched_or_emitted",
)

#: The checkpoint the real-model tests run on.
TINY = "tiny PaliGemma"


@dataclasses.dataclass(frozen=True)
class Expected(Release):
    """A runtime row with what the tests and CI expect of its range.

    Every column of the runtime :class:`Release` row, plus the releases CI
    runs, the checkpoint, and (after :meth:`at`) the facts of one version.
    """

    #: The releases of this range the CI matrix runs (``noxfile.py``).
    tested: tuple[str, ...] = ()
    #: The checkpoint the real-model tests run in this range ("" = none).
    checkpoint: str = TINY
    #: Facts that apply to one version (set by :meth:`at`; empty on the rows).
    facts: tuple[Fact, ...] = ()

    @classmethod
    def of(cls, row: Release, *tested: str, checkpoint: str = TINY) -> Expected:
        """``row``'s columns, with the releases CI runs and the checkpoint."""
        columns = {f.name: getattr(row, f.name) for f in dataclasses.fields(row)}
        return cls(**columns, tested=tested, checkpoint=checkpoint)

    def at(self, version: str) -> Expected:
        """Return the row with the :data:`FACTS` that apply to ``version``."""
        facts = tuple(f for f in FACTS if f.contains(version))
        return dataclasses.replace(self, facts=facts)

    def has(self, name: str) -> bool:
        """Whether patched calls show fact ``name`` (only meaningful after :meth:`at`).

        A fact that a fix applied here repairs (``Fact.fixed_by``, applied
        whatever mlx does with streams) is gone once patched.
        """
        return any(f.name == name and not self._repaired(f) for f in self.facts)

    def shipped(self, name: str) -> bool:
        """Whether the release as it ships, unpatched, shows fact ``name``."""
        return any(f.name == name for f in self.facts)

    def _repaired(self, fact: Fact) -> bool:
        if not fact.fixed_by:
            return False
        return all(fact.fixed_by in self.fixes_on(bound) for bound in (False, True))

    def thread_verdict(self, bound: bool) -> str:
        """The ``thread_stream`` probe's verdict, given whether mlx binds streams."""
        if self.stream == "none":  # mlx's default stream: per thread where bound
            return "no_stream" if bound else "shared_by_threads"
        if self.stream == "import":
            return "bound_to_importing_thread" if bound else "shared_by_threads"
        return "any_thread"

    def verdicts_on(self, bound: bool) -> dict[str, str]:
        """Every probe's verdict, given whether mlx binds streams to threads."""
        return {**self.verdicts, "thread_stream": self.thread_verdict(bound)}

    def fixes_on(self, bound: bool) -> tuple[str, ...]:
        """The fixes applied (``report().fix_names()``), read from ``FIXES``.

        Each fix whose ``when`` the verdicts meet, in ``FIXES`` order (the
        order ``report()`` lists them in): the expectation is the patch's own
        rule applied to the table's data, so a new fix needs no line here.
        """
        verdicts = self.verdicts_on(bound)
        return tuple(spec.name for spec in FIXES if spec.applies(verdicts))

    @property
    def shape(self) -> str:
        """What generate() returns: "str", "tuple" or "result"."""
        return self.verdicts["result_shape"]

    @property
    def fails_on_entry(self) -> bool:
        """Whether every unpatched generation fails on entry off Metal."""
        return self.verdicts["wired_limit"] == "fails_on_entry"

    def tokens_for(self, max_tokens: int, *, patched: bool = True) -> int:
        """How many tokens a call asking for ``max_tokens`` really generates.

        The tiny checkpoint never emits EOS, so that is ``max_tokens``, except
        where the release drops the caller's keyword arguments (``patched``:
        a call through the patch; else the release alone).
        """
        dropped = self.has if patched else self.shipped
        if dropped("kwargs_dropped"):
            return GENERATE_STEP_DEFAULT_MAX_TOKENS
        return max_tokens

    def deselected(self) -> tuple[str, ...]:
        """Test node ids that do not apply to this range (see the constants)."""
        # By the release as it ships: a fact a fix repairs keeps its
        # deselections until they are checked to pass patched (``slow``: checked
        # on 0.1.7, so by the fact as patched).
        utils = UTILS_LAYOUT_TESTS if self.layout == "utils" else ()
        slow = NO_MAX_TOKENS_TESTS if self.has("kwargs_dropped") else ()
        plain = self.shipped("kwargs_dropped") or self.shipped("load_shim")
        app = INSTRUMENTED_APP_TESTS if plain else ()
        shape = RESULT_ONLY_TESTS if self.shape != "result" else ()
        return shape + utils + slow + app

    def facts_in_range(self) -> tuple[Fact, ...]:
        """The :data:`FACTS` that overlap this row."""
        return tuple(
            f
            for f in FACTS
            if Version(f.first) <= Version(self.last)
            and Version(f.last) >= Version(self.first)
        )


def _ci(first: str, *tested: str, checkpoint: str = TINY) -> Expected:
    """The runtime row starting at ``first``, with what CI runs in it."""
    row = next(r for r in RELEASES if r.first == first)
    return Expected.of(row, *tested, checkpoint=checkpoint)


#: The runtime rows CI runs releases of (or that need another checkpoint).
_LISTED: tuple[Expected, ...] = (
    # generate() takes (image, prompt) the other way round: no checkpoint run
    _ci("0.1.0", checkpoint=""),
    _ci("0.1.7", "0.1.7"),
    _ci("0.1.22", "0.1.25"),
    _ci("0.1.26", "0.1.27", "0.2.0"),
    _ci("0.3.0", "0.3.0", "0.3.1"),
    _ci("0.3.2", "0.3.2", "0.3.5", "0.3.10"),
    _ci("0.3.11", "0.3.11", "0.4.4"),
    _ci("0.5.0", "0.5.0"),
    _ci("0.6.0", "0.6.0"),
    _ci("0.6.9", "0.6.17", "0.7.10"),
)
if not {e.first for e in _LISTED} <= {r.first for r in RELEASES}:
    raise RuntimeError("tools/matrix.py lists a row that RELEASES does not have")
#: Each runtime row, in order, with the releases of its range CI runs: a row
#: not listed above (split off by a new probe verdict, say) is not tested in
#: CI and needs no line here.
EXPECTED: tuple[Expected, ...] = tuple(
    next((e for e in _LISTED if e.first == row.first), None) or Expected.of(row)
    for row in RELEASES
)


def expected_for(version: str) -> Expected | None:
    """The row of ``version``'s range (without facts), or None if unknown."""
    try:
        return next((e for e in EXPECTED if e.contains(version)), None)
    except InvalidVersion:
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

    def release(self) -> Expected:
        """The row the code behaves like, with the facts of that release."""
        row = expected_for(self.behaves_like)
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


def expected_release(version: str, install: str | None = None) -> Expected | None:
    """The row (with facts) the tests expect for this environment.

    A known fork or co-install behaves like its upstream base; a release newer
    than the table is expected to behave like the newest range (the matrix's
    ``latest`` environment exists to catch the day it does not).
    """
    known = install_named(install)
    if known is not None:
        return known.release()
    row = expected_for(version)
    if row is None:
        try:
            newer = Version(version) > Version(EXPECTED[-1].last)
        except InvalidVersion:
            return None
        row = EXPECTED[-1] if newer else None
    return row.at(version) if row is not None else None


def server_deselected(row: Expected) -> tuple[tuple[str, str], ...]:
    """``(test node, reason)`` of the server tests that do not apply to ``row``.

    The noxfile runs ``tests/e2e/test_server.py`` (mlx-vlm's own server end to
    end) on every environment, less these; the README's coverage line says
    the same, generated by ``tools/compat_table.py``.
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


def python_deselected(row: Expected, python: tuple[int, ...]) -> tuple[str, ...]:
    """Test node ids that cannot run on Python ``python`` for this row."""
    if row.has("server_needs_py312") and tuple(python[:2]) < (3, 12):
        return SERVER_TESTS
    return ()
