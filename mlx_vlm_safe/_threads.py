"""Generation from any thread: the stream probe, its fix, and a clean exit.

Strictly private. mlx binds a stream to the thread that made it (Metal and
CUDA since 0.31.2, CPU since 0.32.0): used on another thread it raises
``There is no Stream(cpu, 0) in current thread``. mlx-vlm 0.1.22-0.4.4 make
their ``generation_stream`` that way, once, at import, so ``generate()``
works only on the thread that imported mlx-vlm and every web handler, thread
pool or ``asyncio.to_thread`` call fails. 0.5.0+ use
``mx.new_thread_local_stream()``, one object that resolves to the calling
thread's own stream: the fix we install where the probe calls for it.

The second half is the exit. A worker thread's mlx thread-locals are torn
down by C++ after Python already counts the thread as finished; if the
interpreter is finalising by then, the process aborts (``terminate called
without an active exception``). Each worker frees its streams when it ends
(``mx.clear_streams()``, from a per-thread finaliser armed on its first
generation: no per-call set-up), and the exit waits for the last ones' C++
teardown.
"""

from __future__ import annotations

import atexit
import collections
import os
import sys
import threading
import time
from collections.abc import Mapping

from ._probe import Probe, describe

#: The module global mlx-vlm's generation code runs under (0.1.22+).
STREAM_NAME = "generation_stream"
PROBE_NAME = "thread_stream"


def find_stream(scope: Mapping[str, object]) -> object | None:
    """The release's generation stream, if ``scope`` holds one."""
    mx = sys.modules.get("mlx.core")
    value = scope.get(STREAM_NAME)
    kinds = tuple(
        k
        for k in (getattr(mx, "Stream", None), getattr(mx, "ThreadLocalStream", None))
        if isinstance(k, type)
    )
    return value if kinds and isinstance(value, kinds) else None


def _is_thread_local(stream: object) -> bool:
    kind = getattr(sys.modules.get("mlx.core"), "ThreadLocalStream", None)
    return isinstance(kind, type) and isinstance(stream, kind)


def _use_on_this_thread(stream: object, errors: list[BaseException]) -> None:
    mx = sys.modules["mlx.core"]
    try:
        with mx.stream(stream):
            mx.eval(mx.zeros((1,)) + 1)
    except Exception as exc:  # the verdict, not a failure of the probe
        errors.append(exc)
    finally:
        release_thread_streams()  # the probe's thread must not abort the exit


def probe_thread_stream(stream: object | None) -> Probe:
    """Ask whether the generation stream works on a thread other than its maker's.

    Runs one tiny evaluation on the stream from a new thread: the question is
    put to the mlx actually loaded and its device, not to a version number
    (measured on CPU: mlx 0.29.3-0.31.2 share streams between threads, 0.32.0+
    bind them to the thread that made them; on Metal the binding came in 0.31.2).
    """
    if stream is None:
        return Probe(PROBE_NAME, "no_stream", "generation uses mlx's default stream")
    if _is_thread_local(stream):
        return Probe(PROBE_NAME, "any_thread", "a thread-local stream")
    errors: list[BaseException] = []
    worker = threading.Thread(
        target=_use_on_this_thread,
        args=(stream, errors),
        name="mlx_vlm_safe-probe",
        daemon=True,
    )
    worker.start()
    worker.join()
    if not errors:
        return Probe(PROBE_NAME, "any_thread", "mlx streams are shared by threads")
    detail = describe(errors[0])
    if not can_make_thread_local():
        detail += "; this mlx has no new_thread_local_stream, so no fix"
    return Probe(PROBE_NAME, "bound_to_importing_thread", detail)


def can_make_thread_local() -> bool:
    """Whether the loaded mlx can make a per-thread stream (0.31.2+)."""
    return callable(getattr(sys.modules.get("mlx.core"), "new_thread_local_stream", 0))


def thread_local_twin(stream: object) -> object:
    """A stream on the same device that every thread can use as its own."""
    mx = sys.modules["mlx.core"]
    device = getattr(stream, "device", None) or mx.default_device()
    return mx.new_thread_local_stream(device)


# ----------------------------------------------------------- clean thread exit


def release_thread_streams() -> None:
    """Free the calling thread's mlx streams (``mx.clear_streams``), if any."""
    clear = getattr(sys.modules.get("mlx.core"), "clear_streams", None)
    if callable(clear):
        try:
            clear()
        except Exception:  # a failed clean-up must never fail the thread's work
            return


#: Native ids of worker threads that generated and ended, with when they
#: ended: at exit we wait for their C++ teardown. Bounded: only the last few
#: matter, since that teardown takes milliseconds.
_ENDED: collections.deque[tuple[int, float]] = collections.deque(maxlen=256)
#: How long the exit waits for ended workers' teardown, at most (seconds).
EXIT_WAIT = 2.0
_TASKS = "/proc/self/task"


class _ReleaseOnThreadExit:
    """Dropped with its thread's ``threading.local`` state, on that thread.

    CPython clears a thread's ``threading.local`` values while the thread
    still holds the interpreter, just before ``join()`` returns: the last
    moment mlx can be asked to free the thread's streams in order.
    """

    __slots__ = ("native_id",)

    def __init__(self, native_id: int) -> None:
        self.native_id = native_id

    def __del__(self) -> None:
        release_thread_streams()
        _ENDED.append((self.native_id, time.monotonic()))


def wait_for_ended_workers(timeout: float = EXIT_WAIT) -> None:
    """At exit: let recently ended workers finish their C++ teardown.

    A worker's mlx thread-locals are destroyed after Python already counts
    the thread as finished; if the interpreter is finalising by then, their
    destructor's ``PyGILState_Ensure`` ends the thread with ``pthread_exit``
    through a ``noexcept`` frame, and ``std::terminate`` aborts the process
    (seen with mlx 0.32.0 even after ``clear_streams``). Registered with
    ``atexit``, which runs before finalisation: we wait, without the GIL,
    until those threads are gone from ``/proc`` (Linux; elsewhere there is no
    cheap way to tell, and nothing is waited for).
    """
    if not os.path.isdir(_TASKS):
        return
    now = time.monotonic()
    alive = {t.native_id for t in threading.enumerate()}
    pending = {
        tid for tid, ended in _ENDED if now - ended < timeout and tid not in alive
    }
    deadline = now + timeout
    while pending and time.monotonic() < deadline:
        pending = {tid for tid in pending if os.path.exists(f"{_TASKS}/{tid}")}
        if pending:
            time.sleep(0.001)


#: ``guard`` is set on each thread that generated (``None`` on the main
#: thread); the wrappers read it inline, one attribute lookup per call.
per_thread = threading.local()
_MAIN = threading.main_thread()
_exit_lock = threading.Lock()
_exit_registered = False


def arm() -> None:
    """Arm the calling thread (see :class:`_ReleaseOnThreadExit`)."""
    global _exit_registered  # noqa: PLW0603 - once per process
    if threading.current_thread() is _MAIN:
        per_thread.guard = None  # mlx's own exit handlers clean the main thread
        return
    per_thread.guard = _ReleaseOnThreadExit(threading.get_native_id())
    with _exit_lock:
        if not _exit_registered:
            atexit.register(wait_for_ended_workers)
            _exit_registered = True


def arm_thread_exit() -> None:
    """Make sure this thread frees its streams when it ends.

    The hot paths inline the check (``per_thread.guard`` raising
    ``AttributeError`` means "not armed yet") and call :func:`arm` only then.
    """
    try:
        per_thread.guard  # noqa: B018 - the attribute's presence is the check
    except AttributeError:
        arm()
