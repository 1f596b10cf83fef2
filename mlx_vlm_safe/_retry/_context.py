"""Per-context state of retry-managed calls: nesting, opt-out, attempt records.

One ``ContextVar`` holds a ``CallState`` per call, so all of this is per thread
and per asyncio task: a loop running an attempt (inner calls collapse into
it), ``retries_disabled()``, and the records ``last_attempts()`` returns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

from ._events import NO_CHANGES, AttemptRecord

__all__ = ["STATE", "CallState", "last_attempts", "retries_disabled"]


class CallState:
    """What the retry-managed call running (or last run) in a context left behind.

    One mutable object per call, set once in a ``ContextVar``: while ``active``
    a retry loop owns the call stack, so an inner retry-managed call just calls
    through (nested loops would multiply attempts). Afterwards it holds the
    attempt records. Mutating the object instead of setting the variable again
    keeps the happy path to one ``ContextVar.set`` (the costliest step of it);
    that path stores only its clock readings, leaves ``records`` and ``tokens``
    unset, and the records are built on demand by ``last_attempts()``.
    """

    __slots__ = ("active", "ended", "records", "started", "tokens")
    active: bool
    started: float
    ended: float
    tokens: int | None
    records: tuple[AttemptRecord, ...] | None


def _fixed_state(active: bool) -> CallState:
    state = CallState()
    state.active, state.records = active, ()
    return state


#: The default: no call yet in this context. Shared, so never mutated.
IDLE = _fixed_state(active=False)
STATE: ContextVar[CallState] = ContextVar("mlx_vlm_safe_call", default=IDLE)


@contextlib.contextmanager
def retries_disabled() -> Iterator[None]:
    """Within this block, retry-managed calls run once, plainly, with no records.

    Based on a ``ContextVar``, so it affects only the current thread or
    asyncio task.
    """
    token = STATE.set(_fixed_state(active=True))  # calls inside call through
    try:
        yield
    finally:
        STATE.reset(token)


def new_state() -> CallState:
    """Mark this context as running an attempt; one ``ContextVar.set``."""
    state = CallState()
    state.active = True
    STATE.set(state)
    return state


def interrupted(
    state: CallState, exc: BaseException, clock: Callable[[], float]
) -> None:
    """Record attempt 1 cut short by a BaseException; the caller re-raises it."""
    duration = clock() - state.started
    error = type(exc).__name__
    state.records = (AttemptRecord(1, NO_CHANGES, error, duration, None, 0.0),)
    state.active = False


def records_of(state: CallState) -> tuple[AttemptRecord, ...]:
    """Return the state's records, built from the happy path's clock if needed."""
    records = getattr(state, "records", None)  # unset after a happy path
    if records is None:
        duration = state.ended - state.started
        tokens = getattr(state, "tokens", None)
        records = (AttemptRecord(1, NO_CHANGES, None, duration, tokens, 0.0),)
        state.records = records
    return records


def last_attempts() -> tuple[AttemptRecord, ...]:
    """Attempt records of the last retry-managed call in this thread or task.

    Empty before any call, inside ``retries_disabled()`` and while a call is
    still running. Available after success and failure alike, without changing
    what the call returns.
    """
    state = STATE.get()
    return () if state.active else records_of(state)
