"""The call in progress: one mutable object per patched call, and its record.

Strictly private. The wrappers make a :class:`Call` when a caller calls
``generate()`` or ``stream_generate()``; everything that happens to the call
on its way (the memory guard's waits and refusals, the deadline, each retry
attempt, the first token) is written on that one object, and when the call
ends it becomes one :class:`~mlx_vlm_safe._call_record.CallRecord` for the
observers (``_call_record.emit``).

The object travels two ways. Code that runs inside the call's own frames (the
release's ``generate()`` calling our ``stream_generate``, the memory guard's
admission) finds it in :data:`CURRENT`, a ``ContextVar``; a stream carries it
in its generator, because a web server may pull each item on another thread.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from contextvars import ContextVar
from typing import Any

from .._call_record import CallOutcome, CallRecord, emit
from ._deadlines import LIMITS, SCOPE
from ._results import MAX_TOKENS, StreamEnd, outcome_of

__all__ = [
    "CURRENT",
    "Call",
    "GenerationCancelled",
    "current_call",
    "finish",
    "in_flight",
    "stop_if_due",
]

clock = time.monotonic
_scope = SCOPE.get


class Call:
    """What one caller's call has done so far (see the module docstring).

    ``deadline_at`` is a ``clock()`` reading or ``None``; ``cancelled`` is set
    from another thread to stop the call at its next token. Slots, and no
    ``__init__`` logic beyond plain stores and the limits in force (one
    ``ContextVar`` read, see ``_deadlines``): one is made on every call.
    """

    __slots__ = (
        "__weakref__",
        "attempts",
        "cancelled",
        "deadline",
        "deadline_at",
        "end",
        "first_token",
        "input_tokens",
        "memory_refusals",
        "memory_wait",
        "model",
        "operation",
        "requested",
        "started",
        "temperature",
        "watch",
    )

    def __init__(self, operation: str, requested: object) -> None:
        self.operation = operation
        self.requested = requested
        self.started = clock()
        self.first_token: float | None = None
        self.input_tokens: int | None = None
        self.attempts = 0
        self.memory_wait = 0.0
        self.memory_refusals = 0
        self.deadline: float | None = None
        self.deadline_at: float | None = None
        self.cancelled = False
        #: True once the call may have to stop early (a deadline is set, or
        #: someone cancelled it): the one attribute the token loop reads.
        self.watch = False
        self.end: StreamEnd | None = None
        self.model: str | None = None
        self.temperature: float | None = None
        scope = _scope()
        if scope is None:
            timeout = LIMITS.timeout
            if timeout is not None:
                self.deadline = timeout
                self.deadline_at = self.started + timeout
                self.watch = True
        else:
            scope.admit(self)
        if LIMITS.closing:  # the interpreter is shutting down: stop at once
            self.cancelled = self.watch = True
        _IN_FLIGHT.add(self)

    def describe(self, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
        """Note the model's type and the temperature (for telemetry), nothing else.

        The model is the first argument of every release's ``generate`` and
        ``stream_generate``; its ``config.model_type`` names the kind of model
        without naming a file. A temperature is kept only when it is a number.
        """
        model = args[0] if args else kwargs.get("model")
        kind = getattr(getattr(model, "config", None), "model_type", None)
        self.model = kind if isinstance(kind, str) else None
        temperature = kwargs.get("temperature")
        if isinstance(temperature, int | float) and not isinstance(temperature, bool):
            self.temperature = float(temperature)


#: Calls made and not yet finished. Weak: a stream dropped before its first
#: item never runs its ``finally``, and must not stay "in flight" for ever.
_IN_FLIGHT: weakref.WeakSet[Call] = weakref.WeakSet()


def in_flight() -> tuple[Call, ...]:
    """The calls in flight now, in no particular order (a copy)."""
    return tuple(_IN_FLIGHT)


#: The call whose frames are running in this context, if any.
CURRENT: ContextVar[Call | None] = ContextVar("mlx_vlm_safe_current_call", default=None)
current_call = CURRENT.get


def _outcome_of(call: Call, error: BaseException | None) -> CallOutcome:
    if error is None:
        return "ok"
    if call.cancelled or isinstance(error, GeneratorExit):
        return "cancelled"
    if type(error).__name__ == "CancelledError":  # asyncio's, by name: no import
        return "cancelled"
    return "error"


def finish(
    call: Call,
    error: BaseException | None,
    *,
    attempts: int | None = None,
    result: Any = None,
) -> CallRecord:
    """Turn ``call`` into its record, mark ``result`` with it, tell the observers.

    ``attempts`` is the retry engine's count where it has one (``generate()``);
    a stream counts its own attempts as they start. The record is attached to
    a result that takes attributes (``GenerationResult``) as
    ``mlx_vlm_safe_record``: a ``str`` or tuple result cannot carry it, and
    ``last_outcome()`` says the same for them.
    """
    duration = clock() - call.started
    _IN_FLIGHT.discard(call)
    end = call.end
    outcome = _outcome_of(call, error)
    ended = outcome_of(end) if outcome == "ok" else None
    requested = call.requested if call.requested.__class__ is int else None
    served = end[MAX_TOKENS] if end is not None else None
    if served.__class__ is not int:
        served = None
    shortened = ended is not None and ended.shortened
    first = call.first_token
    record = CallRecord(
        operation=call.operation,
        outcome=outcome,
        error_type=None if error is None else type(error).__name__,
        duration=duration,
        time_to_first_token=None if first is None else first - call.started,
        input_tokens=call.input_tokens,
        output_tokens=ended.generation_tokens if ended is not None else None,
        finish_reason=ended.finish_reason if ended is not None else None,
        attempts=attempts if attempts is not None else max(call.attempts, 1),
        shortened=shortened,
        requested_max_tokens=requested,
        max_tokens=served,
        memory_wait=call.memory_wait,
        memory_refusals=call.memory_refusals,
        deadline=call.deadline,
        model=call.model,
        temperature=call.temperature,
    )
    if result is not None and hasattr(result, "__dict__"):
        with contextlib.suppress(Exception):  # a frozen result: it has no record
            result.mlx_vlm_safe_record = record
    emit(record)
    return record


class GenerationCancelled(BaseException):
    """A generation was cancelled: by its task, ``cancel_all()`` or the shutdown.

    A ``BaseException``, like ``asyncio.CancelledError`` and ``KeyboardInterrupt``,
    on purpose: cancelling is the caller's (or the process's) decision, not a
    failure of the call, so ``except Exception:`` fallbacks in application code
    must not swallow it and carry on working on a thread the shutdown is
    waiting for, and the retry engine, which handles ``Exception`` only,
    never retries it. Catch it by name where a cancelled call is expected.
    """


def stop_if_due(call: Call, tokens: int) -> None:
    """Raise if ``call`` must stop now: cancelled, or past its deadline.

    Called between two tokens, only while ``call.watch`` is set, so a call
    with neither costs the token loop one attribute read.
    """
    if call.cancelled:
        raise GenerationCancelled(
            f"generation cancelled after {tokens} tokens (mlx_vlm_safe)"
        )
    at = call.deadline_at
    if at is not None:
        now = clock()
        if now >= at:
            raise TimeoutError(
                f"generation stopped at its deadline of {call.deadline:g} s after "
                f"{tokens} tokens, {now - call.started:.1f} s into the call "
                "(mlx_vlm_safe)"
            )
