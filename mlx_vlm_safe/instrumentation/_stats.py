"""``mlx_vlm_safe.stats()``: counts and percentiles of this process's calls.

Strictly private; the face re-exports :class:`Stats` and :func:`stats`. Always
on once the patch applies, because it is the one view that needs nothing
installed and nothing configured: an observer that adds a few integers under
a lock per call, and keeps the last :data:`WINDOW` durations for the
percentiles (computed when someone asks, not per call).
"""

from __future__ import annotations

import array
import collections
import dataclasses
import math
import threading
import time
from collections.abc import Mapping

from .._call_record import CallRecord
from . import _gauges

__all__ = ["WINDOW", "Stats", "observe", "reset", "stats"]

#: How many recent calls the percentiles are computed over.
WINDOW = 1024


@dataclasses.dataclass(frozen=True)
class Percentiles:
    """p50 / p90 / p99 of a quantity over the recent calls that had it."""

    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    samples: int = 0


@dataclasses.dataclass(frozen=True)
class Stats:
    """A snapshot of every patched call this process made since start (or reset).

    A copy: changing it changes nothing; ``dataclasses.asdict`` gives its JSON.

    Counts cover all calls; percentiles cover the last :data:`WINDOW` calls.

    Attributes:
        calls: calls ended (after their retries).
        outcomes: calls by outcome: ``"ok"``, ``"error"``, ``"cancelled"``.
        errors: failed (``"error"``) calls by exception class name.
        shortened: answers shortened by a retry ladder step.
        retries: attempts beyond the first, over all calls.
        memory_refusals: attempts the memory guard refused.
        memory_wait: seconds spent waiting for memory, over all calls.
        input_tokens: prompt tokens, where the release counts them.
        output_tokens: answer tokens of successful calls.
        duration: seconds per call (all outcomes).
        time_to_first_token: seconds to the first token.
        tokens_per_second: decode speed of successful calls.
        in_flight: calls running now.
        since: ``time.time()`` when counting started.

    """

    calls: int
    outcomes: Mapping[str, int]
    errors: Mapping[str, int]
    shortened: int
    retries: int
    memory_refusals: int
    memory_wait: float
    input_tokens: int
    output_tokens: int
    duration: Percentiles
    time_to_first_token: Percentiles
    tokens_per_second: Percentiles
    in_flight: int
    since: float

    @property
    def error_rate(self) -> float | None:
        """Failed calls over all calls (``None`` before the first call)."""
        return None if not self.calls else self.outcomes.get("error", 0) / self.calls


class _Window:
    """The last :data:`WINDOW` values, in a ring allocated once.

    An ``array`` of doubles, not a deque of floats: recording a value
    allocates nothing, so a long-running service's memory stays flat (the
    soak test measures what this package allocates per call).
    """

    __slots__ = ("filled", "next", "values")

    def __init__(self) -> None:
        self.values = array.array("d", bytes(8 * WINDOW))
        self.filled = 0
        self.next = 0

    def append(self, value: float) -> None:
        self.values[self.next] = value
        self.next = (self.next + 1) % WINDOW
        if self.filled < WINDOW:
            self.filled += 1

    def snapshot(self) -> list[float]:
        return self.values[: self.filled].tolist()


class _Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        self.calls = 0
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.shortened = self.retries = self.memory_refusals = 0
        self.input_tokens = self.output_tokens = 0
        self.memory_wait = 0.0
        self.durations = _Window()
        self.firsts = _Window()
        self.speeds = _Window()
        self.since = time.time()


_COUNTERS = _Counters()


def observe(record: CallRecord) -> None:
    """The observer: fold one record into the counters."""
    c = _COUNTERS
    speed = record.tokens_per_second if record.outcome == "ok" else None
    with c.lock:
        c.calls += 1
        c.outcomes[record.outcome] += 1
        if record.outcome == "error" and record.error_type:
            c.errors[record.error_type] += 1
        c.shortened += record.shortened
        c.retries += record.attempts - 1
        c.memory_refusals += record.memory_refusals
        c.memory_wait += record.memory_wait
        c.input_tokens += record.input_tokens or 0
        if record.outcome == "ok":
            c.output_tokens += record.output_tokens or 0
        c.durations.append(record.duration)
        if record.time_to_first_token is not None:
            c.firsts.append(record.time_to_first_token)
        if speed is not None:
            c.speeds.append(speed)


def _percentiles(values: list[float]) -> Percentiles:
    """Nearest-rank percentiles: always a value that was observed."""
    if not values:
        return Percentiles()
    values.sort()
    n = len(values)

    def rank(q: float) -> float:
        return values[max(0, math.ceil(q * n) - 1)]

    return Percentiles(rank(0.50), rank(0.90), rank(0.99), n)


def stats() -> Stats:
    """A typed snapshot of this process's patched calls (see :class:`Stats`).

    Cheap enough to call from a health endpoint: it copies a few counters and
    sorts at most :data:`WINDOW` numbers per percentile.
    """
    c = _COUNTERS
    with c.lock:
        outcomes = dict(c.outcomes)
        errors = dict(c.errors)
        snapshot = (c.durations.snapshot(), c.firsts.snapshot(), c.speeds.snapshot())
        counts = (c.calls, c.shortened, c.retries, c.memory_refusals)
        totals = (c.memory_wait, c.input_tokens, c.output_tokens, c.since)
    for outcome in ("ok", "error", "cancelled"):
        outcomes.setdefault(outcome, 0)
    return Stats(
        calls=counts[0],
        outcomes=outcomes,
        errors=errors,
        shortened=counts[1],
        retries=counts[2],
        memory_refusals=counts[3],
        memory_wait=totals[0],
        input_tokens=totals[1],
        output_tokens=totals[2],
        duration=_percentiles(snapshot[0]),
        time_to_first_token=_percentiles(snapshot[1]),
        tokens_per_second=_percentiles(snapshot[2]),
        in_flight=_gauges.in_flight(),
        since=totals[3],
    )


def reset() -> None:
    """Start counting again from zero (tests, or a periodic report)."""
    with _COUNTERS.lock:
        _COUNTERS.clear()
