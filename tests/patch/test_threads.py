"""generate() from any thread, as services call it, and a clean exit after.

Real model, real threads: a ``threading.Thread``, a 4-worker pool with 16
calls, ``asyncio.to_thread``, a stream whose every ``next()`` runs on a new
thread (Starlette streaming a sync generator), whole streams consumed inside
pool workers, and callers generating at the same moment. Each must give the
greedy answer the main thread gets alone. Then the exit: processes that
generated on worker threads (joined, pooled, still alive at exit) must exit
with their own status, several runs each, since the abort was intermittent.

Which releases and mlx need the fix is data (``Release.stream`` and
``streams_bound``): the probe's verdict must match it, and the control test
shows that without the patch a worker-thread call fails exactly where the
table says it does.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import pathlib
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import mlx_vlm_safe
from mlx_vlm_safe._patch import _thread_exit, locate
from mlx_vlm_safe.testing import tiny_prompt
from tools.matrix import Expected

from ..conftest import Tiny, run_python

pytestmark = pytest.mark.model

TOKENS = 6


def _text(result: Any) -> str:
    if isinstance(result, tuple):  # 0.1.26-0.2.0: (text, stats)
        result = result[0]
    return result if isinstance(result, str) else str(result.text)


def _call(tiny: Tiny, mlx_vlm: Any) -> str:
    return _text(tiny.call(mlx_vlm.generate, max_tokens=TOKENS))


def _on_thread(work: Callable[[], Any]) -> Any:
    """Run ``work`` on a new thread; return its value or raise its error."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = work()
        except BaseException as exc:
            box["error"] = exc

    worker = threading.Thread(target=target)
    worker.start()
    worker.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.fixture(scope="module")
def alone(tiny: Tiny, mlx_vlm: Any) -> str:
    """The greedy answer of the thread that imported mlx-vlm."""
    mlx_vlm_safe.patch()
    answer = _call(tiny, mlx_vlm)
    assert answer, "the tiny model answered nothing"
    return answer


def test_probe_verdict_is_the_tables(release: Expected, bound: bool) -> None:
    report = mlx_vlm_safe.report()
    verdict = release.thread_verdict(bound)
    assert report.probe("thread_stream") == verdict
    applied = "thread_local_stream" in report.fix_names()
    assert applied is (verdict == "bound_to_importing_thread")


def check_generate_on_another_thread(tiny: Tiny, mlx_vlm: Any) -> None:
    """``thread_local_stream``'s symptom: another thread gets the same answer."""
    assert _on_thread(lambda: _call(tiny, mlx_vlm)) == _call(tiny, mlx_vlm)


def test_thread(tiny: Tiny, mlx_vlm: Any, alone: str) -> None:
    check_generate_on_another_thread(tiny, mlx_vlm)


def test_pool_of_4_with_16_calls(tiny: Tiny, mlx_vlm: Any, alone: str) -> None:
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: _call(tiny, mlx_vlm), range(16)))
    assert answers == [alone] * 16


def test_asyncio_to_thread(tiny: Tiny, mlx_vlm: Any, alone: str) -> None:
    async def main() -> list[str]:
        calls = [asyncio.to_thread(_call, tiny, mlx_vlm) for _ in range(4)]
        return await asyncio.gather(*calls)

    assert asyncio.run(main()) == [alone] * 4


def test_concurrent_callers_each_get_their_own_answer(
    tiny: Tiny, mlx_vlm: Any, exports: Any
) -> None:
    """Twelve callers released at one barrier, generating at the same time.

    Each must get the greedy answer it gets alone. Up to 0.4.4 the calls fed
    one shared detokenizer and raced on it (2-3 of 12 answers garbled at 256
    tokens, in 2 of 3 runs without the fix): a race, so this test catches its
    return most of the time, not always.
    """
    _callers_at_once(tiny, mlx_vlm, exports, tokens=256, rounds=1)


def test_rounds_of_concurrent_callers_never_crash_the_process(
    tiny: Tiny, mlx_vlm: Any, exports: Any
) -> None:
    """Six rounds of twelve callers at once, each round at one barrier.

    Where mlx shares the generation stream between threads (CPU up to mlx
    0.31.x), concurrent evaluation on it ends the process with a segmentation
    fault or a heap-corruption abort: without the fix 5 of 6 stress runs (ten
    rounds each, two runs in parallel) died on mlx 0.29.3, 0.31.1 and 0.31.2,
    patched or not. A crash takes the whole pytest run down, which is how this
    test fails: a race, so not every time (with the fix switched off, 1 of 2
    runs of this test crashed on mlx 0.29.3 with another job running). Every
    answer must also be the one the caller gets alone.
    """
    _callers_at_once(tiny, mlx_vlm, exports, tokens=128, rounds=6)


def _callers_at_once(
    tiny: Tiny, mlx_vlm: Any, exports: Any, *, tokens: int, rounds: int
) -> None:
    """``rounds`` times, twelve callers (half calls, half streams) at a barrier.

    Every answer must be the one the same kind of call gives alone.
    """

    def answer() -> str:
        return _text(tiny.call(mlx_vlm.generate, max_tokens=tokens))

    def streamed() -> str:
        return _streamed(list(tiny.stream(exports.stream_generate, max_tokens=tokens)))

    alone, alone_streamed = answer(), streamed()
    expected = [alone if i % 2 else alone_streamed for i in range(12)]
    for _ in range(rounds):
        barrier = threading.Barrier(12)

        def work(i: int, barrier: threading.Barrier = barrier) -> str:
            barrier.wait()
            return answer() if i % 2 else streamed()

        with ThreadPoolExecutor(12) as pool:
            assert list(pool.map(work, range(12))) == expected


def _streamed(items: list[Any]) -> str:
    return "".join(_text(item) for item in items)


def test_two_streams_advanced_in_turn_keep_their_own_text(
    tiny: Tiny, exports: Any
) -> None:
    """Two answers made token by token in turn, each ``next()`` on a new thread.

    As Starlette streams two responses at once: each stream keeps its own
    thread-local stream state and its own text.
    """
    other = tiny_prompt(tiny.processor, tiny.model.config, "What else is there?")

    def streams() -> tuple[Iterator[Any], Iterator[Any]]:
        first = tiny.stream(exports.stream_generate, max_tokens=TOKENS)
        second = iter(
            exports.stream_generate(
                tiny.model, tiny.processor, other, image=tiny.image, max_tokens=TOKENS
            )
        )
        return first, second

    alone = tuple(_streamed(list(s)) for s in streams())
    assert alone[0] != alone[1], "the two prompts must give different answers"
    first, second = streams()
    pieces: tuple[list[Any], list[Any]] = ([], [])
    live = [0, 1]
    while live:
        for index in list(live):
            stream = (first, second)[index]
            item = _on_thread(lambda s=stream: next(s, None))
            if item is None:
                live.remove(index)
            else:
                pieces[index].append(item)
    assert (_streamed(pieces[0]), _streamed(pieces[1])) == alone


def test_stream_hopping_threads(
    tiny: Tiny, exports: Any, release: Expected, alone: str
) -> None:
    """Each ``next()`` on a new thread, as Starlette streams a sync generator."""
    on_one = list(tiny.stream(exports.stream_generate, max_tokens=TOKENS))
    stream = tiny.stream(exports.stream_generate, max_tokens=TOKENS)
    hopped: list[Any] = []
    while (item := _on_thread(lambda: next(stream, None))) is not None:
        hopped.append(item)
    assert _streamed(hopped) == _streamed(on_one)
    assert len(hopped) == len(on_one)
    if release.shape == "result":  # str/tuple releases stream other pieces
        assert _streamed(hopped) == alone


def test_streams_consumed_inside_pool_workers(tiny: Tiny, exports: Any) -> None:
    on_one = _streamed(list(tiny.stream(exports.stream_generate, max_tokens=TOKENS)))

    def consume(_: int) -> str:
        return _streamed(list(tiny.stream(exports.stream_generate, max_tokens=TOKENS)))

    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(consume, range(4))) == [on_one] * 4


def test_errors_from_a_worker_thread_are_real(tiny: Tiny, mlx_vlm: Any) -> None:
    """A bad argument on a worker thread: the caller's own error, at once."""
    with pytest.raises((TypeError, ValueError), match="max_tokens"):
        _on_thread(lambda: tiny.call(mlx_vlm.generate, max_tokens="8"))


def test_unpatched_worker_thread_fails_where_the_table_says(
    tiny: Tiny, mlx_vlm: Any, release: Expected, bound: bool, unpatched: None
) -> None:
    """The control: the release as it ships, called from a worker thread."""

    def call() -> str:
        _thread_exit.arm_thread_exit()  # unpatched, nothing else frees its streams
        return _call(tiny, mlx_vlm)

    if release.fails_on_entry:  # nothing generates off Metal unpatched
        with pytest.raises((KeyError, RuntimeError)):
            _on_thread(call)
        return
    if release.thread_verdict(bound) != "bound_to_importing_thread":
        assert _on_thread(call)
        return
    # 0.3.2-0.3.10 swallow the stream error into the NoneType/token crash.
    with pytest.raises((RuntimeError, AttributeError), match=r"Stream|NoneType"):
        _on_thread(call)


# ------------------------------------------------------------- thread exit


@contextlib.contextmanager
def _counting_clear_streams() -> Iterator[list[int]]:
    """Count ``mx.clear_streams()`` calls and the threads that made them."""
    mx = sys.modules["mlx.core"]
    original = getattr(mx, "clear_streams", None)
    calls: list[int] = []

    def clear_streams() -> None:
        calls.append(threading.get_ident())
        if original is not None:
            original()

    mx.clear_streams = clear_streams
    try:
        yield calls
    finally:
        if original is None:
            del mx.clear_streams
        else:
            mx.clear_streams = original


def test_worker_frees_its_streams_once_when_it_ends(tiny: Tiny, mlx_vlm: Any) -> None:
    """Three generations on one thread: no per-call set-up, one clean-up."""
    idents: list[int] = []
    with _counting_clear_streams() as calls:

        def work() -> None:
            idents.append(threading.get_ident())
            for _ in range(3):
                _call(tiny, mlx_vlm)
            assert calls == []  # nothing per call

        _on_thread(work)
        gc.collect()
    assert calls == idents  # once, on the worker itself
    assert any(tid for tid, _ in _thread_exit._ENDED)


def test_main_thread_is_left_to_mlx(tiny: Tiny, mlx_vlm: Any) -> None:
    with _counting_clear_streams() as calls:
        _call(tiny, mlx_vlm)
    assert calls == []


_EXIT_PROGRAM = """
import asyncio, contextlib, sys, threading
from concurrent.futures import ThreadPoolExecutor
import mlx_vlm_safe
import mlx_vlm
from mlx_vlm_safe.testing import build_tiny_checkpoint, tiny_image_path, tiny_prompt

shim = contextlib.nullcontext()
if {load_shim!r}:  # 0.2.0: the suite's test-only load() shim (tests/conftest.py)
    sys.path.insert(0, {tests!r})
    from conftest import _audio_less_load
    shim = _audio_less_load()
with shim:
    model, processor = mlx_vlm.load(str(build_tiny_checkpoint({cache!r})))
prompt = tiny_prompt(processor, model.config, "Describe the picture.")
image = [str(tiny_image_path({cache!r}))]
generate = mlx_vlm.generate
if not callable(generate):  # 0.1.x: the attribute can be the CLI module
    generate = sys.modules["mlx_vlm.utils"].generate

def call():
    return generate(model, processor, prompt, image=image, max_tokens=4,
                    verbose=False)

def joined():
    worker = threading.Thread(target=call)
    worker.start()
    worker.join()

def pool_alive_at_exit():
    pool = ThreadPoolExecutor(4)  # never shut down: the interpreter joins it
    list(pool.map(lambda _: call(), range(8)))

def daemon_alive_at_exit():
    ready = threading.Event()
    def serve():
        call()
        ready.set()
        threading.Event().wait()
    threading.Thread(target=serve, daemon=True).start()
    ready.wait()

def to_thread():
    async def main():
        await asyncio.gather(*[asyncio.to_thread(call) for _ in range(4)])
    asyncio.run(main())

call()
for how in {hows!r}:
    globals()[how]()
print("generated", *{hows!r}, flush=True)
sys.exit(7)
"""

HOWS = ("joined", "pool_alive_at_exit", "daemon_alive_at_exit", "to_thread")


def _exit_statuses(
    hows: tuple[str, ...], runs: int, release: Expected, tmp: Any
) -> None:
    """Run the program ``runs`` times: exit status 7, as it says, never 134."""
    code = textwrap.dedent(_EXIT_PROGRAM).format(
        hows=hows,
        cache=str(tmp),
        load_shim=release.has("load_shim"),
        tests=str(pathlib.Path(__file__).parents[1]),
    )
    statuses = []
    for _ in range(runs):
        proc = run_python(code, timeout=300)
        statuses.append(proc.returncode)
        assert "generated" in proc.stdout, proc.stderr[-2000:]
        assert "terminate called" not in proc.stderr, proc.stderr[-2000:]
    assert statuses == [7] * runs


def test_process_exits_with_its_own_status_after_worker_generations(
    tmp_path: pathlib.Path, release: Expected
) -> None:
    """Every way of generating off the main thread, in one process, 3 runs.

    On every release (it is cheap): a joined thread, a pool left alive for the
    interpreter to join, a daemon thread still alive at exit, and
    ``asyncio.to_thread``. Without the fix, mlx 0.32 aborted about half of
    such runs (SIGABRT, "terminate called without an active exception").
    """
    _exit_statuses(HOWS, 3, release, tmp_path)


@pytest.mark.subprocess
@pytest.mark.parametrize("how", HOWS)
def test_each_way_exits_cleanly_run_after_run(
    how: str, tmp_path: pathlib.Path, release: Expected
) -> None:
    """One way per process, 5 runs each, where the fresh-interpreter tests run."""
    _exit_statuses((how,), 5, release, tmp_path)


def check_steps_never_overlap(tiny: Tiny, exports: Any) -> None:
    """``serialized_steps``' symptom: no step of one call runs beside another's.

    Deterministic and safe where mlx shares its stream (where a real overlap
    crashes the process): a seam at ``generate_step`` holds the first call
    inside its first step, idle, for up to a second; the second call starts
    only then. Where steps are serialized it waits for the lock and never
    enters the seam while the first is in it; where they are not, it enters,
    and the seam makes it raise before it does any mlx work, so the two never
    evaluate at once. Fails if the second call entered.
    """
    scope = locate(sys.modules["mlx_vlm"]).stream_generate.__globals__  # type: ignore[union-attr]
    real = scope["generate_step"]
    guard = threading.Lock()
    inside, overlapped = [0], threading.Event()
    entered = threading.Event()

    def seam(*args: Any, **kwargs: Any) -> Iterator[Any]:
        with guard:
            if inside[0]:
                overlapped.set()
                raise RuntimeError("a step started while another was running")
            inside[0] += 1
        try:
            if not entered.is_set():  # the first call: hold its first step
                entered.set()
                overlapped.wait(timeout=1.0)
        finally:
            with guard:
                inside[0] -= 1
        yield from real(*args, **kwargs)

    def second() -> None:
        entered.wait(timeout=30)
        with contextlib.suppress(RuntimeError):  # the seam's, where it overlapped
            list(tiny.stream(exports.stream_generate, max_tokens=2))

    scope["generate_step"] = seam
    try:
        other = threading.Thread(target=second)
        other.start()
        _on_thread(lambda: list(tiny.stream(exports.stream_generate, max_tokens=2)))
        other.join()
    finally:
        scope["generate_step"] = real
    assert entered.is_set(), "the seam never ran"
    assert not overlapped.is_set(), "two calls' steps ran at the same time"


def check_a_call_inside_another_keeps_its_text(tiny: Tiny, exports: Any) -> None:
    """``private_detokenizer``'s symptom: a call that overlaps another garbles it.

    The race of concurrent callers made deterministic: a second generation
    runs to the end inside the first one's third ``add_token``, between the
    token being added and the text being read, which is where a concurrent
    caller's ``reset()`` loses it. Sharing the processor's detokenizer, the
    first answer comes back without that piece; with the fix, the second
    call has its own copy and the first answer is whole.
    """
    shared = tiny.processor.detokenizer
    cls = type(shared)
    real = cls.__dict__.get("add_token")
    assert real is not None, f"{cls.__name__} defines no add_token"
    other = tiny_prompt(tiny.processor, tiny.model.config, "What else is there?")
    calls = [0]

    def add_token(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = real(self, *args, **kwargs)
        if self is shared:
            calls[0] += 1
            if calls[0] == 3:  # the second call, start to end, right here
                list(
                    exports.stream_generate(
                        tiny.model,
                        tiny.processor,
                        other,
                        image=tiny.image,
                        max_tokens=3,
                    )
                )
        return result

    alone = _streamed(list(tiny.stream(exports.stream_generate, max_tokens=TOKENS)))
    cls.add_token = add_token
    try:
        first = _streamed(list(tiny.stream(exports.stream_generate, max_tokens=TOKENS)))
    finally:
        cls.add_token = real
    assert calls[0] >= 3, "the first call never reached its third token"
    assert first == alone
