"""One record per finished generation, and who hears about it.

Strictly private; :class:`CallRecord` is re-exported by the package. Every
patched ``generate()`` / ``stream_generate()`` call (after its retries) ends
in exactly one record: the memory guard, the deadlines and the telemetry
backends all write to or read from this one value, so "what happened to this
request" has one answer. A record carries counts, times and class names only:
never the prompt, the images or the output text, so nothing private can leak
into metrics, spans or logs through it.

Observers are called synchronously on the thread that ended the call, after
the caller's result or error is settled; an observer that raises is logged
once and never changes what the caller gets. The list is a tuple replaced as
a whole (copy on write), so emitting reads it without a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Literal, NamedTuple

from ._log import log

__all__ = ["CallOutcome", "CallRecord", "emit", "observers", "subscribe"]

#: ``"ok"``: the caller got its answer; ``"error"``: the call raised;
#: ``"cancelled"``: the caller stopped it (a stream closed early, a cancelled
#: task, ``cancel_all()``), which is not the generation's fault.
CallOutcome = Literal["ok", "error", "cancelled"]


class CallRecord(NamedTuple):
    """What one patched generation call did, from the caller's point of view.

    A named tuple, like ``AttemptRecord``: immutable, and made on every call
    (building it costs a tenth of a frozen dataclass's 17 stores).

    Attributes:
        operation: ``"generate"`` or ``"stream_generate"`` (the async faces
            record the call they run).
        outcome: see :data:`CallOutcome`.
        error_type: the exception's class name when ``outcome`` is not ``"ok"``.
        duration: seconds from the call to its end, waits and retries included.
        time_to_first_token: seconds to the first item of the answer's
            stream; ``None`` when no item came.
        input_tokens: prompt tokens, as the release counted them (``None``
            where it does not say: 0.1.x-0.2.x).
        output_tokens: tokens of the answer the caller got.
        finish_reason: ``"stop"``, ``"length"`` or ``"empty"``; ``None`` when
            the call did not end normally.
        attempts: attempts made (1 unless the retry policy stepped in).
        shortened: the answer was generated with a smaller ``max_tokens``
            than the caller asked for (a retry ladder step) and hit it: it is
            shorter than the requested answer would have been.
        requested_max_tokens: the caller's ``max_tokens`` (or the release's
            default).
        max_tokens: the ``max_tokens`` the final attempt ran with.
        memory_wait: seconds spent waiting for memory (admission).
        memory_refusals: times the memory guard refused an attempt.
        deadline: the time limit in force for the call, in seconds.
        model: the model's type (``config.model_type``, e.g. ``"paligemma"``),
            never a path.
        temperature: the sampling temperature asked for, when a number.

    """

    operation: str
    outcome: CallOutcome
    error_type: str | None
    duration: float
    time_to_first_token: float | None
    input_tokens: int | None
    output_tokens: int | None
    finish_reason: str | None
    attempts: int
    shortened: bool
    requested_max_tokens: int | None
    max_tokens: int | None
    memory_wait: float
    memory_refusals: int
    deadline: float | None
    model: str | None = None
    temperature: float | None = None

    @property
    def tokens_per_second(self) -> float | None:
        """Output tokens over the time after the first one (decode speed)."""
        first = self.time_to_first_token
        tokens = self.output_tokens
        if first is None or not tokens or tokens < 2 or self.duration <= first:
            return None
        return (tokens - 1) / (self.duration - first)


Observer = Callable[[CallRecord], object]
_observers: tuple[Observer, ...] = ()
_lock = threading.Lock()
_failed: set[int] = set()  # observers already logged as failing


def observers() -> tuple[Observer, ...]:
    """The observers now subscribed (the hot path reads the tuple directly)."""
    return _observers


def subscribe(observer: Observer) -> Callable[[], None]:
    """Call ``observer(record)`` after every patched call; returns an unsubscribe.

    Subscribing the same observer twice is a no-op: a backend started twice
    (two ``import`` paths, a re-patch) never counts a call twice.
    """
    global _observers  # noqa: PLW0603 - copy-on-write tuple, see the docstring
    with _lock:
        if observer not in _observers:
            _observers = (*_observers, observer)

    def unsubscribe() -> None:
        global _observers  # noqa: PLW0603
        with _lock:
            _observers = tuple(o for o in _observers if o is not observer)

    return unsubscribe


def emit(record: CallRecord) -> None:
    """Hand ``record`` to every observer; an observer's error never escapes."""
    for observer in _observers:
        try:
            observer(record)
        except Exception:  # telemetry must never be why a call fails
            if id(observer) not in _failed:
                _failed.add(id(observer))
                log.warning("call observer %r failed", observer, exc_info=True)
