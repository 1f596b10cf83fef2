"""Deadlines and cancel handles: what limits a call before it starts.

Strictly private; the package re-exports :class:`deadline`. A call's limits
come from, nearest first:

1. a :class:`Scope` in :data:`SCOPE`, a ``ContextVar``: set by ``with
   deadline(30):`` for a block of calls (a point in time, shared by every call
   in the block, like ``asyncio.timeout``), or by the async face for the one
   call it runs in a worker thread (that scope also carries the cancel handle);
2. the configured ``timeout`` (``configure(timeout=)``, else the environment
   variable ``MLX_VLM_SAFE_TIMEOUT``): a time limit for each call on its own.

"Nearest wins" is deliberate: a process-wide ``timeout=60`` must not stop a
batch job that asks for ``deadline(600)``, and ``deadline(None)`` lifts every
limit for its block. Contexts are copied into worker threads by
``asyncio.to_thread``, ``run_in_executor`` through the async face, and
Starlette's thread pool, so a block's deadline follows its calls there.

This module reads no call object (``_calls`` imports it, not the reverse):
:meth:`Scope.admit` writes the limits on whatever call it is handed.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any

from .. import _env

__all__ = [
    "DEADLINE_SETTINGS",
    "LIMITS",
    "SCOPE",
    "TIMEOUT_VARIABLE",
    "Canceller",
    "Scope",
    "checked_timeout",
    "deadline",
    "deadline_in_force",
    "limit_for_new_call",
    "reset_timeout",
    "set_timeout",
]

#: Seconds each call may run (unset, empty or "off": no limit).
TIMEOUT_VARIABLE = "MLX_VLM_SAFE_TIMEOUT"
#: The names ``configure()`` takes for the time limit.
DEADLINE_SETTINGS = frozenset({"timeout"})
clock = time.monotonic


def checked_timeout(name: str, value: object) -> float | None:
    """``value`` as a time limit in seconds: a finite number > 0, or ``None``.

    Raises:
        ValueError: anything else (``0`` too: "stop at once" is not a limit
            anyone means to configure).

    """
    if value is None:
        return None
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(
            f"{name} must be a number of seconds > 0, or None, got {value!r}"
        )
    return float(value)


def parse_timeout(raw: str | None) -> float | None:
    """The environment's spelling: seconds, or unset/empty/``off``/``none``."""
    if raw is None or raw.strip().lower() in ("", "off", "none"):
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"{TIMEOUT_VARIABLE}={raw!r} is not a number of seconds > 0 "
            "(or 'off'); no time limit is set"
        )
    return value


class _Limits:
    """The process-wide settings every new call reads (two attribute reads)."""

    __slots__ = ("closing", "from_env", "timeout")

    def __init__(self) -> None:
        #: Seconds per call, or None.
        self.timeout: float | None = None
        #: Whether ``timeout`` came from the environment (``doctor`` says so).
        self.from_env = False
        #: Set at interpreter shutdown: calls started from then on are born
        #: cancelled, so a thread pool's queued work cannot start a generation
        #: the exit would have to wait for.
        self.closing = False


LIMITS = _Limits()
_lock = threading.Lock()


def _warn(message: str) -> None:
    """One loud line on stderr (and the log): a bad setting must be seen."""
    import logging

    logging.getLogger("mlx_vlm_safe").warning("%s", message)
    if sys.stderr is not None and not logging.getLogger().handlers:
        sys.stderr.write(f"mlx_vlm_safe: {message}\n")


def reset_timeout() -> None:
    """Forget ``configure(timeout=)``: read the environment again (now)."""
    with _lock:
        raw = os.environ.get(TIMEOUT_VARIABLE)
        try:
            LIMITS.timeout = parse_timeout(raw)
        except ValueError as exc:
            LIMITS.timeout = None
            _warn(str(exc))
            _env.warned(TIMEOUT_VARIABLE, raw or "")
        LIMITS.from_env = LIMITS.timeout is not None


def set_timeout(seconds: float | None) -> None:
    """``configure(timeout=)``: already checked by :func:`checked_timeout`."""
    with _lock:
        LIMITS.timeout = seconds
        LIMITS.from_env = False


class Canceller:
    """The cancel handle of one async call: cancels its calls, present and future."""

    __slots__ = ("calls", "cancelled")

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.cancelled = False

    def cancel(self) -> None:
        """Stop every call made under this handle at its next token.

        ``cancelled`` first, then the calls: a call registering itself at the
        same moment (:meth:`Scope.admit`) appends first and reads ``cancelled``
        after, so no call is missed.
        """
        self.cancelled = True
        for call in tuple(self.calls):
            call.cancelled = True
            call.watch = True


class Scope:
    """The limits for the calls made in one context (see the module docstring).

    ``sets_deadline``: whether this scope decides the deadline (a ``deadline()``
    block, or a scope that inherited one); otherwise the configured timeout
    applies. ``at`` is a ``clock()`` reading or ``None`` (no limit).
    """

    __slots__ = ("at", "canceller", "seconds", "sets_deadline")

    def __init__(
        self,
        seconds: float | None,
        at: float | None,
        *,
        sets_deadline: bool,
        canceller: Canceller | None = None,
    ) -> None:
        self.seconds = seconds
        self.at = at
        self.sets_deadline = sets_deadline
        self.canceller = canceller

    def admit(self, call: Any) -> None:
        """Write this scope's limits on a new call (from ``Call.__init__``)."""
        if self.sets_deadline:
            if self.at is not None:
                call.deadline = self.seconds
                call.deadline_at = self.at
                call.watch = True
        else:
            timeout = LIMITS.timeout
            if timeout is not None:
                call.deadline = timeout
                call.deadline_at = call.started + timeout
                call.watch = True
        canceller = self.canceller
        if canceller is not None:
            canceller.calls.append(call)
            if canceller.cancelled:
                call.cancelled = True
                call.watch = True


#: The scope of the code running now; ``None``: only the configured timeout.
SCOPE: ContextVar[Scope | None] = ContextVar("mlx_vlm_safe_scope", default=None)


class deadline:  # used like a function: ``with deadline(30):``
    """Limit the generations in a block: ``with mlx_vlm_safe.deadline(30): ...``.

    The block's calls must end within ``seconds`` of entering it (one point
    in time, shared by all of them); past it, a call stops at its next token
    and raises ``TimeoutError`` naming the limit and the tokens it produced.
    ``deadline(None)`` lifts every limit, the configured ``timeout`` too, for
    the block. The nearest block wins, longer or shorter. Works in threads
    and tasks alike: the limit lives in a ``ContextVar``; the async face and
    ``asyncio.to_thread`` carry it into their worker threads.

    Raises:
        ValueError: ``seconds`` is not a number > 0 or ``None``.

    """

    __slots__ = ("_tokens", "seconds")

    def __init__(self, seconds: float | None) -> None:
        self.seconds = checked_timeout("deadline", seconds)
        self._tokens: list[Token[Scope | None]] = []

    def __repr__(self) -> str:
        return f"deadline({self.seconds!r})"

    def __enter__(self) -> deadline:
        seconds = self.seconds
        at = None if seconds is None else clock() + seconds
        outer = SCOPE.get()
        canceller = None if outer is None else outer.canceller
        scope = Scope(seconds, at, sets_deadline=True, canceller=canceller)
        self._tokens.append(SCOPE.set(scope))
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        SCOPE.reset(self._tokens.pop())


def limit_for_new_call() -> tuple[float, float] | None:
    """``(seconds, at)`` for work that starts now outside a ``Call``, or ``None``.

    For generations the patch does not run as calls (mlx-vlm's own server
    threads): the same rules as ``Call.__init__``.
    """
    scope = SCOPE.get()
    if scope is not None and scope.sets_deadline:
        if scope.at is None or scope.seconds is None:
            return None
        return scope.seconds, scope.at
    timeout = LIMITS.timeout
    return None if timeout is None else (timeout, clock() + timeout)


def deadline_in_force() -> str:
    """What limits a call made here and now, in words (``doctor``, ``report()``)."""
    scope = SCOPE.get()
    if scope is not None and scope.sets_deadline:
        if scope.at is None:
            return "none (a deadline(None) block)"
        left = max(0.0, scope.at - clock())
        return f"{scope.seconds:g} s (a deadline() block, {left:.1f} s left)"
    timeout = LIMITS.timeout
    if timeout is None:
        return "none"
    source = TIMEOUT_VARIABLE if LIMITS.from_env else "configure(timeout=)"
    return f"{timeout:g} s per call ({source})"


reset_timeout()
