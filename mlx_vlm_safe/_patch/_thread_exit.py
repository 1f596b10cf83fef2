"""A clean exit for processes that generated on worker threads.

Strictly private. A worker thread's mlx thread-locals are torn down by C++
after Python already counts the thread as finished; if the interpreter is
finalising by then, the process aborts (``terminate called without an active
exception``). Each worker frees its streams when it ends (``mx.clear_streams()``,
from a per-thread finaliser armed on its first generation: no per-call set-up),
and the exit waits for the last ones' C++ teardown.
"""

from __future__ import annotations

import atexit
import collections
import os
import threading
import time

from . import _mlx


def release_thread_streams() -> None:
    """Free the calling thread's mlx streams (``mx.clear_streams``), if any."""
    clear = getattr(_mlx.core(), "clear_streams", None)
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
