"""Test sessions: lint, and the real-release suite once per mlx-vlm environment.

``nox`` runs ``lint`` and ``matrix``; ``matrix`` runs every ``tests(...)``
session, two at a time (this machine and CI have two cores), and prints one
line per environment. Every environment runs every real-model test; the tests
that need a fresh interpreter (``-m subprocess``) run on the environments in
``FRESH_INTERPRETER_ENVS`` of ``tools/matrix.py`` (one per server binding). One
environment alone: ``nox -s "tests(0.3.5)"``; the list: ``nox -l``.

Each environment gets its own virtualenv (uv makes them cheap: every wheel
comes from uv's cache after the first run, shared by all environments), with
``mlx[cpu]``, one mlx-vlm release and the library. What the suite expects of a
release is read from ``tools/matrix.py``; this file only says what to
install, and why each pin is there. The releases listed here and the
table's ``tested`` releases must agree (checked when this file loads).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
from typing import Any

import nox

ROOT = pathlib.Path(__file__).resolve().parent

nox.options.default_venv_backend = "uv"
nox.options.reuse_existing_virtualenvs = False
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["lint", "matrix"]
# Offline but for the package index: never download an interpreter (nox would
# ask uv to, and uv would try on its own too). An environment whose Python is
# not installed runs on the runner's own interpreter instead (_interpreter).
nox.options.download_python = "never"
os.environ["UV_PYTHON_DOWNLOADS"] = "never"
# Trust the machine's certificate store (where an HTTPS proxy's CA goes), as
# pip does, rather than only uv's built-in roots (UV_NATIVE_TLS: older uv).
os.environ.setdefault("UV_SYSTEM_CERTS", "1")
os.environ.setdefault("UV_NATIVE_TLS", "1")

#: How many ``tests`` sessions ``matrix`` runs at once (2 cores here and in CI).
JOBS = int(os.environ.get("MLX_VLM_SAFE_JOBS", "2"))


def _load_table() -> Any:
    """``tools/matrix.py``, by path (it puts the checkout on sys.path itself)."""
    path = ROOT / "tools" / "matrix.py"
    spec = importlib.util.spec_from_file_location("_mlx_vlm_safe_matrix", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


TABLE = _load_table()


#: Companion versions for every pinned environment: the stack the matrix doc
#: (shared/docs/mlx-vlm-matrix.md) measured all 75 releases with, and that
#: every release in this file installs and runs on. Pinned so that a new mlx
#: or transformers release cannot change what an old mlx-vlm release does
#: overnight; the ``latest`` environment floats everything and catches that.
#: None of the releases below needs an *older* companion: 0.1.7-0.3.9 were
#: written for transformers 4.x but load and run the tiny checkpoint on 5.24
#: (0.3.5 with transformers<5 even fails: PaliGemmaProcessor returns numpy
#: arrays), and mlx 0.32.4 runs them all.
STACK = (
    # the mlx the matrix was measured with, and its cpu wheel (Linux needs it:
    # plain mlx has no libmlx.so)
    f"mlx=={TABLE.STACK_MLX}",
    f"mlx-cpu=={TABLE.STACK_MLX}",
    "mlx-lm==0.32.2",  # pulled in by 0.1.15-0.6.13; newest, matches mlx 0.32
    "transformers==5.24.0",  # what every release resolves to (0.6.4 aside)
    "mlx-audio==0.6.2",  # pulled in by 0.2.0-0.3.1 and 0.5.0+
    # numpy is left to each release: 0.1.0-0.1.23 pin scipy==1.13.1 (numpy<2.3)
)

#: Python 3.12 for 0.1.26-0.2.0: their ``mlx_vlm.server`` uses
#: ``typing.TypedDict``, which pydantic 2.14 rejects on Python < 3.12, so the
#: server cannot even be imported on 3.11 (the import-order and server tests
#: need it: ``nox -s "tests(0.1.27)" -- -m subprocess``).
PY312_SERVER = "3.12"
PYTHON = "3.11"

#: Python 3.10 cannot install two of STACK's pins: transformers 5.24.0 and
#: mlx-lm 0.32.2 need Python 3.11+. These are the newest releases of each that
#: support 3.10 (what pip resolves there); mlx 0.32.4 and mlx-audio 0.6.2 stay.
#: Checked: 0.3.5 and 0.7.10 install and run the suite on them.
PY310_PINS = ("transformers==5.20.2", "mlx-lm==0.31.3")
#: Pins an environment on this Python needs instead of STACK's (by name).
PYTHON_PINS = {"3.10": PY310_PINS}


@dataclasses.dataclass(frozen=True)
class Env:
    """One CI environment: what to install, in order, and on which Python."""

    installs: tuple[tuple[str, ...], ...]
    python: str = PYTHON
    pinned: bool = True  # constrain the companions to STACK
    matrix_env: str | None = None  # MLX_VLM_SAFE_MATRIX_ENV (forks, co-installs)
    mlx: str | None = None  # another mlx than STACK's, with its own mlx-lm
    #: On the Python axis: skipped (not run on another Python) where this
    #: environment's Python is not installed.
    python_axis: bool = False
    #: The test paths this environment runs; empty: the whole suite. An axis
    #: environment repeats a release the matrix already runs whole, on another
    #: mlx or Python: it runs what that axis can change (CI time is finite).
    paths: tuple[str, ...] = ()

    def constraints(self) -> tuple[str, ...]:
        """STACK, with this environment's mlx (and the mlx-lm made for it) and
        the pins its Python needs instead of STACK's."""
        ours: tuple[str, ...] = PYTHON_PINS.get(self.python, ())
        if self.mlx is not None:
            ours += (f"mlx=={self.mlx}", f"mlx-cpu=={self.mlx}", MLX_LM_FOR[self.mlx])
        names = tuple(pin.split("==")[0] + "==" for pin in ours)
        kept = tuple(pin for pin in STACK if not pin.startswith(names))
        return ours + kept


def _upstream(
    version: str,
    python: str = PYTHON,
    mlx: str | None = None,
    axis: bool = False,
    paths: tuple[str, ...] = (),
) -> Env:
    return Env(
        ((f"mlx-vlm=={version}",),),
        python=python,
        mlx=mlx,
        python_axis=axis,
        paths=paths,
    )


#: What an older mlx can change: threads, streams, the exit, mlx's memory
#: figures, deadlines and cancellation: the patch's tests.
MLX_AXIS_PATHS = ("tests/patch",)
#: What another Python can change: the package's own code paths (the patch,
#: the retry engine, configure); the CLI, telemetry, the fault-injection
#: kit's property tests and the documentation run on every 3.11 environment.
PYTHON_AXIS_PATHS = ("tests/patch", "tests/retry", "tests/test_configure.py")
#: A release that behaves like a neighbour the matrix runs whole (the same
#: verdicts but one, or the same code under another name) runs the patch's
#: tests, where that one verdict is checked: the rest of the suite does not
#: depend on the release (CI has 90 minutes for 27 environments).
NEIGHBOUR_PATHS = ("tests/patch",)


#: The mlx-lm to install beside an older mlx: mlx-lm only pins mlx on macOS,
#: and the newest mlx-lm needs mlx 0.31.2's new_thread_local_stream.
MLX_LM_FOR = {
    "0.29.3": "mlx-lm==0.29.1",
    "0.31.1": "mlx-lm==0.31.1",
    "0.31.2": "mlx-lm==0.31.2",
    "0.32.0": "mlx-lm==0.32.0",
}


#: Environment id -> what it installs. The id is the session's parameter:
#: ``nox -s "tests(0.3.5)"``.
ENVIRONMENTS: dict[str, Env] = {
    "0.1.7": _upstream("0.1.7"),  # oldest with stream_generate; drops all kwargs
    "0.1.25": _upstream("0.1.25"),  # str results + wired_limit fails on entry
    "0.1.27": _upstream("0.1.27", PY312_SERVER),  # tuple results; server: 3.12
    "0.2.0": _upstream("0.2.0", PY312_SERVER),  # load() broken; server: 3.12
    "0.3.0": _upstream("0.3.0"),  # module layout; fails on entry off Metal
    # last release failing on entry (like 0.3.0)
    "0.3.1": _upstream("0.3.1", paths=NEIGHBOUR_PATHS),
    # first affected: wired_limit swallows (like 0.3.5)
    "0.3.2": _upstream("0.3.2", paths=NEIGHBOUR_PATHS),
    "0.3.5": _upstream("0.3.5"),  # affected
    # last affected (like 0.3.5); first needing transformers 5
    "0.3.10": _upstream("0.3.10", paths=NEIGHBOUR_PATHS),
    "0.3.11": _upstream("0.3.11"),  # wired_limit fixed upstream
    "0.4.4": _upstream("0.4.4"),  # accepts an int repetition_penalty
    "0.5.0": _upstream("0.5.0"),  # last module layout; ResponseGenerator server
    "0.6.0": _upstream("0.6.0"),  # package layout, empty-stream guard upstream
    "0.6.17": _upstream("0.6.17"),  # last 0.6.x
    "0.7.10": _upstream("0.7.10"),  # newest release when this was written
    # The mlx axis: threads and exit depend on mlx, not only on mlx-vlm (every
    # environment above has STACK's mlx 0.32.4, the newest). CPU streams are
    # shared by all threads up to 0.31.2 and bound to their thread from 0.32.0;
    # 0.3.5 makes its stream at import (the fix applies only where bound).
    # 0.5.0+ (thread-local streams) install only with mlx 0.32.4: mlx-audio
    # 0.6.2 pins it. The pairs come from the table (MLX_AXIS); why each mlx:
    # 0.29.3 streams shared by threads; 0.31.1 the last before mlx issue 3727;
    # 0.31.2 Metal streams bound, CPU not;
    # 0.32.0 CPU streams bound, and the exit aborted even after clear_streams.
    # 0.1.7 on 0.29.3: a release on mlx's default stream, which that mlx
    # shares between threads (serialized_steps applies there, not on 0.32+).
    **{
        f"{release}-mlx{mlx}": _upstream(release, mlx=mlx, paths=MLX_AXIS_PATHS)
        for release, mlxs in TABLE.MLX_AXIS.items()
        for mlx in mlxs
    },
    # The Python axis (TABLE.PYTHON_AXIS): the package supports Python 3.10+,
    # and users run python:3.10 images; 3.13 is the newest Python mlx 0.32.4
    # has wheels for. Every other environment runs 3.11, so these keep the
    # oldest and the newest release working on the oldest and newest Python:
    # 3.10 catches syntax and stdlib use newer than 3.10 (and needs older
    # transformers and mlx-lm: PY310_PINS), 3.13 catches removals and
    # deprecations. Both install STACK's mlx 0.32.4 (cp310 and cp313 wheels).
    # Skipped, not substituted, where that Python is not installed.
    **{
        f"{release}-py{python}": _upstream(
            release, python=python, axis=True, paths=PYTHON_AXIS_PATHS
        )
        for release, pythons in TABLE.PYTHON_AXIS.items()
        for python in pythons
    },
    # Whatever is newest on PyPI when CI runs, companions unpinned: a new
    # upstream release that breaks the patch shows up here at once.
    "latest": Env((("mlx-vlm",),), pinned=False),
    # A fork that installs the same `mlx_vlm` package (no upstream 0.5.1):
    # classified by behaviour, like 0.5.0.
    "mlx-vlm-nell": Env(
        (("mlx-vlm-nell==0.5.1",),), matrix_env="mlx-vlm-nell", paths=NEIGHBOUR_PATHS
    ),
    # mlx-vlm 0.3.5, then the fork fount-vlm-nell-02 (0.3.11 code) over it:
    # metadata says 0.3.5, the code is 0.3.11; report() must say both.
    "coinstall": Env(
        (("mlx-vlm==0.3.5",), ("fount-vlm-nell-02==0.3.11",)),
        matrix_env="coinstall",
    ),
}


def _version_of(env_id: str) -> str | None:
    """The mlx-vlm release an environment id names ("0.3.5-mlx0.29.3": 0.3.5)."""
    match = re.fullmatch(r"([\d.]+)(?:-mlx[\d.]+|-py[\d.]+)?", env_id)
    return match.group(1) if match else None


def _check_against_table() -> None:
    upstream = {_version_of(k) for k in ENVIRONMENTS} - {None}
    tested = {v for row in TABLE.EXPECTED for v in row.tested}
    installs = {i.name for i in TABLE.INSTALLS}
    forks = {e.matrix_env for e in ENVIRONMENTS.values() if e.matrix_env}
    if upstream != tested or forks != installs:
        raise SystemExit(
            "noxfile.py and tools/matrix.py disagree on what CI tests: "
            f"only here {sorted((upstream - tested) | (forks - installs))}, "
            f"only in the table {sorted((tested - upstream) | (installs - forks))}"
        )
    assert set(TABLE.FRESH_INTERPRETER_ENVS) <= set(ENVIRONMENTS)
    axis = {f"{r}-py{p}" for r, ps in TABLE.PYTHON_AXIS.items() for p in ps}
    on_axis = {k for k, e in ENVIRONMENTS.items() if e.python_axis}
    assert axis == on_axis, (axis, on_axis)
    assert set(TABLE.PYTHON_AXIS) <= tested, TABLE.PYTHON_AXIS
    for name, env in ENVIRONMENTS.items():
        if env.matrix_env:
            steps = tuple(s for step in env.installs for s in step)
            assert steps == TABLE.install_named(env.matrix_env).installs, name


_check_against_table()


def _row(env_id: str) -> Any:
    """The table's row (with facts) for this environment; None for ``latest``."""
    env = ENVIRONMENTS[env_id]
    version = _version_of(env_id)
    install = TABLE.install_named(env.matrix_env)
    if install is not None:
        return install.release()
    if version is not None:
        return TABLE.expected_release(version)
    return None  # latest: whatever it is, the whole suite


def _deselected(env_id: str) -> list[str]:
    """``--deselect`` arguments the table gives for this environment."""
    row = _row(env_id)
    if row is None:
        return []
    server = tuple(node for node, _ in TABLE.server_deselected(row))
    nodes = (*row.deselected(), *server, *_interpreter(env_id).deselected)
    return [arg for node in dict.fromkeys(nodes) for arg in ("--deselect", node)]


#: The interpreter behind the one running nox (a virtualenv's base Python):
#: what an environment runs on when the Python it asks for is not installed.
RUNNER_PYTHON = os.path.realpath(getattr(sys, "_base_executable", sys.executable))


@functools.cache
def _python_version(exe: str) -> tuple[int, ...] | None:
    """``exe``'s (major, minor, micro), or None if it does not run."""
    probe = subprocess.run(
        [exe, "-c", "import sys; print(*sys.version_info[:3])"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0 or not probe.stdout.strip():
        return None
    return tuple(int(x) for x in probe.stdout.split())


@functools.cache
def _installed(version: str) -> str | None:
    """A real interpreter for ``version``: on PATH, or from pyenv's versions.

    pyenv's ``python3.12`` shim fails unless 3.12 is selected, and neither
    nox's discovery nor uv looks into pyenv's versions directory.
    """
    exe = shutil.which(f"python{version}")
    if exe:
        probe = subprocess.run(
            [exe, "-c", "import sys; print(sys.executable)"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip():
            return probe.stdout.strip()
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found = glob.glob(os.path.join(root, "versions", f"{version}.*", "bin"))
    found.sort(key=lambda p: [int(x) for x in re.findall(r"\d+", p.split("/")[-2])])
    for bindir in reversed(found):
        candidate = os.path.join(bindir, f"python{version}")
        if os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclasses.dataclass(frozen=True)
class Interpreter:
    """The Python an environment runs on, and what that costs it."""

    wanted: str
    path: str
    version: tuple[int, ...]
    #: ``--deselect``-ed node ids, because ``version`` is not ``wanted``.
    deselected: tuple[str, ...] = ()

    @property
    def substitute(self) -> bool:
        return self.version[:2] != tuple(int(x) for x in self.wanted.split("."))

    def describe(self) -> str:
        """One line for the log: which Python, and why if not the wanted one."""
        text = f"python {'.'.join(map(str, self.version))} ({self.path})"
        if self.substitute:
            text += f"; wanted {self.wanted}, not installed"
            if self.deselected:
                text += f": deselected {', '.join(self.deselected)}"
        return text


@functools.cache
def _interpreter(env_id: str) -> Interpreter:
    """The interpreter ``env_id`` runs on: its own Python, else the runner's.

    Never downloaded (CI is offline but for the package index). The tests
    that need the wanted Python are deselected, by name, on a substitute:
    the table (``tools/matrix.py``'s ``python_deselected``) says which.
    """
    env = ENVIRONMENTS[env_id]
    path = _installed(env.python) or RUNNER_PYTHON
    version = _python_version(path)
    if version is None:  # the runner's own interpreter always runs
        path, version = RUNNER_PYTHON, tuple(sys.version_info[:3])
    row = _row(env_id)
    deselected = TABLE.python_deselected(row, version) if row is not None else ()
    return Interpreter(env.python, path, version, deselected)


@nox.session(python=_installed(PYTHON) or RUNNER_PYTHON)
def lint(session: nox.Session) -> None:
    """ruff (lint + format) and mypy --strict over the package."""
    session.install("-e", ".[dev]", "mlx[cpu]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


_PARAMS = [
    nox.param(_interpreter(env_id).path, env_id, id=env_id) for env_id in ENVIRONMENTS
]


@nox.session
@nox.parametrize(("python", "env_id"), _PARAMS)
def tests(session: nox.Session, env_id: str) -> None:
    """The whole suite against one real mlx-vlm environment on CPU."""
    env = ENVIRONMENTS[env_id]
    if env.python_axis and _interpreter(env_id).substitute:
        session.skip(f"Python {env.python} is not installed (never downloaded)")
    constraints: list[str] = []
    if env.pinned:
        path = pathlib.Path(session.create_tmp()) / "constraints.txt"
        path.write_text("\n".join(env.constraints()) + "\n")
        constraints = ["--constraint", str(path)]
    first, *later = env.installs
    # Also next to a fork: mlx-vlm is not our dependency, so nothing pulls
    # upstream mlx-vlm over the fork's files (the line below prints which
    # distribution provides mlx_vlm; the report tests check it).
    session.install("mlx[cpu]", *first, "-e", ".[tests]", *constraints)
    for step in later:  # installed over the previous step, files and all
        session.install(*step, *constraints)
    session.log(f"tests({env_id}): {_interpreter(env_id).describe()}")
    session.run(
        "python",
        "-c",
        "import importlib.metadata as m, mlx_vlm, sys; print('mlx-vlm', "
        "mlx_vlm.__version__, 'metadata', m.packages_distributions()['mlx_vlm'], "
        "'mlx', m.version('mlx'), 'on python', sys.version.split()[0], "
        "sys.executable)",
    )
    # Everywhere else: every in-process test, and mlx-vlm's own server end to
    # end (tests/e2e/test_server.py, marker "server") where the table says it applies.
    lean = (
        []
        if env_id in TABLE.FRESH_INTERPRETER_ENVS
        else ["-m", "not subprocess or server"]
    )
    for node, reason in TABLE.server_deselected(_row(env_id)) if _row(env_id) else ():
        session.log(f"deselected {node}: {reason}")
    session.run(
        "python",
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        *lean,
        *_deselected(env_id),
        *(session.posargs or env.paths),
        env={"MLX_VLM_SAFE_MATRIX_ENV": env.matrix_env or ""},
    )


# ------------------------------------------------------------------ the driver

_LOGS = ROOT / ".nox" / "_matrix"
#: The long environments (they also run the fresh-interpreter tests: ~4 min
#: each, measured with the other lane busy) go one at a time in one lane,
#: while the other lane works through the short ones (~1-1.5 min each).
_LONG = TABLE.FRESH_INTERPRETER_ENVS


def _next(todo: list[str], running: dict[str, Any]) -> str:
    """The next environment to start: a long one unless one is running."""
    long_running = any(e in _LONG for e in running)
    for env_id in todo:
        if (env_id in _LONG) != long_running:
            return env_id
    return todo[0]


def _summary_of(log: pathlib.Path) -> str:
    """pytest's closing line ("262 passed, 3 deselected in 70.12s"), if any."""
    text = log.read_text(errors="replace") if log.exists() else ""
    lines = [
        ln.strip("= ").strip()
        for ln in text.splitlines()
        if re.search(r"\b(passed|failed|error|no tests ran)\b", ln)
        and re.search(r"\bin [\d.]+s\b", ln)
    ]
    return lines[-1] if lines else "no pytest summary (see the log)"


@nox.session(python=False)
def matrix(session: nox.Session) -> None:
    """Run every ``tests(...)`` environment, JOBS at a time; one line each."""
    _LOGS.mkdir(parents=True, exist_ok=True)
    todo = list(ENVIRONMENTS)
    if session.posargs:
        todo = [e for e in todo if e in session.posargs]
    running: dict[str, tuple[subprocess.Popen[bytes], float, Any]] = {}
    results: dict[str, tuple[int, float]] = {}
    started = time.monotonic()
    while todo or running:
        while todo and len(running) < JOBS:
            env_id = _next(todo, running)
            todo.remove(env_id)
            log = open(_LOGS / f"{env_id}.log", "wb")  # noqa: SIM115
            proc = subprocess.Popen(
                [sys.executable, "-m", "nox", "-s", f"tests({env_id})"],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            running[env_id] = (proc, time.monotonic(), log)
            session.log(f"started tests({env_id})")
        time.sleep(1)
        for env_id, (proc, t0, log) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[env_id]
            results[env_id] = (proc.returncode, time.monotonic() - t0)
            verdict = "passed" if proc.returncode == 0 else "FAILED"
            session.log(
                f"tests({env_id}): {verdict} in {results[env_id][1]:.0f}s: "
                f"{_summary_of(_LOGS / f'{env_id}.log')}"
            )
    failed = [e for e, (code, _) in results.items() if code != 0]
    for env_id in failed:
        tail = (_LOGS / f"{env_id}.log").read_text(errors="replace").splitlines()
        print(f"\n----- tests({env_id}) FAILED; last lines of its log -----")
        print("\n".join(line[:400] for line in tail[-80:]))
    print(f"\nmlx-vlm matrix, {time.monotonic() - started:.0f}s wall, {JOBS} jobs:")
    for env_id in ENVIRONMENTS:
        if env_id not in results:
            continue
        code, seconds = results[env_id]
        verdict = "passed" if code == 0 else "FAILED"
        summary = _summary_of(_LOGS / f"{env_id}.log")
        print(f"  {env_id:<13} {verdict:<6} {seconds:4.0f}s  {summary}")
        print(f"  {'':<13} {_interpreter(env_id).describe()}")
    totals = {"passed": 0, "failed": 0}
    for env_id in results:
        summary = _summary_of(_LOGS / f"{env_id}.log")
        for word, count in re.findall(r"(\d+) (passed|failed|errors?)\b", summary):
            key = "passed" if count == "passed" else "failed"
            totals[key] += int(word)
    print(f"matrix: {totals['passed']} passed, {totals['failed']} failed")
    if failed:
        session.error(f"matrix failed on: {', '.join(failed)}")
