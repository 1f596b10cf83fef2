"""Generation from any thread: the generation stream's probe and its fix.

Strictly private. mlx binds a stream to the thread that made it (Metal and
CUDA since 0.31.2, CPU since 0.32.0): used on another thread it raises
``There is no Stream(cpu, 0) in current thread``. mlx-vlm 0.1.22-0.4.4 make
their ``generation_stream`` that way, once, at import, so ``generate()``
works only on the thread that imported mlx-vlm. 0.5.0+ use
``mx.new_thread_local_stream()``, one object that resolves to the calling
thread's own stream: the replacement installed where the probe calls for it.
"""

from __future__ import annotations

import threading

from ..._log import describe
from .. import _mlx
from .._locate import Located
from .._report import Probe
from .._thread_exit import release_thread_streams
from . import Context, FixSpec

NAME = "thread_stream"
#: The question the thread probe answers, in ``doctor``'s words.
THREADS = (
    "generate() from other threads (web handlers, thread pools, asyncio.to_thread):"
)


def _is_thread_local(stream: object) -> bool:
    kind = getattr(_mlx.core(), "ThreadLocalStream", None)
    return isinstance(kind, type) and isinstance(stream, kind)


def _use_on_this_thread(stream: object, errors: list[BaseException]) -> None:
    mx = _mlx.core()
    assert mx is not None  # a stream exists, so mlx is loaded
    try:
        with mx.stream(stream):
            mx.eval(mx.zeros((1,)) + 1)
    except Exception as exc:  # the verdict, not a failure of the probe
        errors.append(exc)
    finally:
        release_thread_streams()  # the probe's thread must not abort the exit


def _error_on_another_thread(stream: object) -> BaseException | None:
    """Run one tiny evaluation on ``stream`` from a new thread; its error, if any."""
    errors: list[BaseException] = []
    worker = threading.Thread(
        target=_use_on_this_thread,
        args=(stream, errors),
        name="mlx_vlm_safe-probe",
        daemon=True,
    )
    worker.start()
    worker.join()
    return errors[0] if errors else None


def probe_thread_stream(stream: object | None) -> Probe:
    """Ask whether the generation stream works on a thread other than its maker's.

    Runs one tiny evaluation on the stream from a new thread: the question is
    put to the mlx actually loaded and its device, not to a version number.
    ``any_thread``: a thread-local stream; ``shared_by_threads``: one stream
    every thread uses (safe one at a time only: see ``_shared_stream``);
    ``bound_to_importing_thread``: it fails off the thread that made it;
    ``no_stream``: the release runs on mlx's default stream, and each thread
    has its own. Where this mlx shares its default stream between threads
    (before 0.32.0 on CPU), a release without a stream of its own gets
    ``shared_by_threads`` too.
    """
    mx = _mlx.core()
    if stream is None:
        default = mx.default_stream(mx.default_device()) if mx is not None else None
        if default is None or _error_on_another_thread(default) is not None:
            return Probe(NAME, "no_stream", "generation uses mlx's default stream")
        return Probe(
            NAME,
            "shared_by_threads",
            "generation uses mlx's default stream, which this mlx shares "
            "between threads",
        )
    if _is_thread_local(stream):
        return Probe(NAME, "any_thread", "a thread-local stream")
    error = _error_on_another_thread(stream)
    if error is None:
        return Probe(
            NAME, "shared_by_threads", "this mlx shares streams between threads"
        )
    detail = describe(error, 200)
    if not can_make_thread_local():
        detail += "; this mlx has no new_thread_local_stream, so no fix"
    return Probe(NAME, "bound_to_importing_thread", detail)


def probe(located: Located) -> Probe:
    """The probe on the release's generation stream, if it has one."""
    return probe_thread_stream(located.generation_stream)


def can_make_thread_local() -> bool:
    """Whether the loaded mlx can make a per-thread stream (0.31.2+)."""
    return callable(getattr(_mlx.core(), "new_thread_local_stream", 0))


def thread_local_twin(stream: object, context: Context) -> object:
    """A stream on the same device that every thread can use as its own."""
    mx = _mlx.core()
    if mx is None or not can_make_thread_local():
        context.warn(
            "mlx-vlm's generation stream works only on the thread that "
            "imported mlx_vlm, and this mlx cannot make a per-thread stream: "
            "call generate() from that thread"
        )
        return None
    device = getattr(stream, "device", None) or mx.default_device()
    return mx.new_thread_local_stream(device)


THREAD_LOCAL_STREAM = FixSpec(
    "thread_local_stream",
    "the generation stream was made at import and this mlx binds streams to "
    "their thread; replaced by a thread-local stream so generate() works from "
    "any thread",
    replaces="generation_stream",
    when={NAME: frozenset({"bound_to_importing_thread"})},
    build=thread_local_twin,
    probe=probe,
    root_cause=True,
    fixed_upstream_in="0.5.0",
    doctor=f"{THREADS} FAILS without the patch: the release made its generation "
    "stream at import and this mlx binds streams to the thread that made them "
    "({stream}, or the "
    "NoneType/token crash where errors are swallowed).",
)
