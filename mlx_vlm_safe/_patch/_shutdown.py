"""Cancel generations in flight: on request (``cancel_all()``) and at shutdown.

Strictly private; the package re-exports :func:`cancel_all`. A cancelled call
stops at its next token (``_calls.stop_if_due``) and raises
``GenerationCancelled``; a call waiting for memory or between retries stops
waiting.

Why the shutdown needs this: when the main thread ends (the end of ``main``,
``sys.exit`` from a signal handler, uvicorn's second Ctrl-C), the interpreter
joins every non-daemon thread before it finalises. A worker thread still in
a 100000-token generation makes that join last as long as the generation;
a third Ctrl-C interrupts the join, the interpreter finalises under the
running worker, and mlx's thread teardown aborts the process (``terminate
called without an active exception``, exit 134). ``threading._register_atexit``
(what ``concurrent.futures`` uses to stop its pools) runs a function when the
main thread ends, *before* that join: there we cancel every call in flight,
mark new calls as born cancelled (a pool's queued work must not start a
generation now), stop mlx-vlm's own server threads (``_server_threads``),
and let the join finish within one token. ``atexit`` would run after the
join: too late.
"""

from __future__ import annotations

import signal
import sys
import threading

from ._calls import in_flight
from ._deadlines import LIMITS
from ._server_threads import stop_servers

__all__ = ["cancel_all", "install_shutdown_hook"]


def cancel_all() -> int:
    """Cancel every patched generation in flight; return how many there were.

    Each one stops at its next token (a call waiting for memory or for a
    retry stops waiting) and raises ``mlx_vlm_safe.GenerationCancelled`` in
    the thread that runs it; a stream raises it from its next item. Calls
    started afterwards are not affected: this is for an app's own shutdown
    hook (FastAPI's ``lifespan``, a signal handler), where new work no longer
    arrives. Safe from any thread and from a signal handler (it only sets two
    attributes per call).
    """
    calls = in_flight()
    for call in calls:
        call.cancelled = True
        call.watch = True
    return len(calls)


def _ignore_interrupt(signum: int, frame: object) -> None:
    """SIGINT while the exit waits for cancelled workers: nothing to do."""
    if sys.stderr is not None:
        sys.stderr.write(
            "mlx_vlm_safe: generations are stopping; the process exits in a moment\n"
        )


def _on_main_thread_end() -> None:
    """Cancel what is in flight before the interpreter joins the workers.

    If anything was cancelled, a further Ctrl-C during the join is answered
    with a line instead of a ``KeyboardInterrupt`` that would cut the join
    short (and abort the process, see the module docstring): the workers end
    within one token.
    """
    LIMITS.closing = True
    cancelled = cancel_all() + stop_servers()
    if not cancelled or threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _ignore_interrupt)
    except (ValueError, OSError):  # not the main interpreter, or no signals
        return


_installed = False
_lock = threading.Lock()


def install_shutdown_hook() -> None:
    """Register :func:`_on_main_thread_end` (once per process; at patch time).

    ``concurrent.futures`` is imported first on purpose: its own hook joins
    its pools' workers, hooks run last-registered first, and ours must run
    before that join.
    """
    global _installed  # noqa: PLW0603 - once per process
    with _lock:
        if _installed:
            return
        import concurrent.futures.thread  # noqa: F401 - registers its hook first

        register = getattr(threading, "_register_atexit", None)
        if register is None:  # pragma: no cover - CPython 3.9+ has it
            return
        try:
            register(_on_main_thread_end)
        except RuntimeError:  # the interpreter is already shutting down
            return
        _installed = True
