"""Per-context state of retry-managed calls: nesting, opt-out, attempt records.

One ``ContextVar`` holds a ``CallState`` per call, so all of this is per thread
and per asyncio task: a loop running an attempt (inner calls collapse into
it), ``retries_disabled()``, and the records ``last_attempts()`` returns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

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

    ``end`` is how the last stream in this context ended, a value the engine
    carries but never reads (the patch's ``StreamEnd``): a stream writes it
    on the call's own object instead of setting a variable of its own. A new
    state starts from the previous one's, so a call that runs no stream does
    not erase it; ``inherited`` keeps that starting value, so "a stream ended
    during this call" is ``end is not inherited``.
    """

    __slots__ = ("active", "end", "ended", "inherited", "records", "started", "tokens")
    active: bool
    started: float
    ended: float
    tokens: int | None
    records: tuple[AttemptRecord, ...] | None
    end: tuple[Any, ...] | None
    inherited: tuple[Any, ...] | None


def _fixed_state(active: bool, end: tuple[Any, ...] | None = None) -> CallState:
    state = CallState()
    state.active, state.records = active, ()
    state.end = state.inherited = end
    return state


#: The default: no call yet in this context. Shared, so never mutated.
IDLE = _fixed_state(active=False)
STATE: ContextVar[CallState] = ContextVar("mlx_vlm_safe_call", default=IDLE)


@contextlib.contextmanager
def retries_disabled() -> Iterator[None]:
    """Within this block, retry-managed calls run once, plainly, with no records.

    Based on a ``ContextVar``, so it affects only the current thread or
    asyncio task. How the last generation in the block ended is still
    reported afterwards (``last_outcome()``).
    """
    # "active": calls inside call through.
    block = _fixed_state(active=True, end=STATE.get().end)
    token = STATE.set(block)
    try:
        yield
    finally:
        STATE.reset(token)
        if block.end is not block.inherited and block.end is not None:
            record_end(block.end)


def new_state(previous: CallState) -> CallState:
    """Mark this context as running an attempt; one ``ContextVar.set``."""
    state = CallState()
    state.active = True
    state.end = state.inherited = previous.end
    STATE.set(state)
    return state


def record_end(end: tuple[Any, ...]) -> None:
    """Record how a stream ended on this context's current call state.

    The per-call state is this context's own object (one per call, per
    ``retries_disabled()`` block), so it is written in place: no second
    ``ContextVar.set`` on the hot path. Only the shared ``IDLE`` default is
    replaced, by a fresh state.
    """
    state = STATE.get()
    if state is not IDLE:
        state.end = end
        return
    STATE.set(_fixed_state(active=False, end=end))


def current_end() -> tuple[Any, ...] | None:
    """How the last stream in this context ended, if one did."""
    return STATE.get().end


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
