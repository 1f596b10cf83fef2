"""Admission with reservations: concurrent generations share one budget.

Strictly private. The guard alone judges each call against the room left
*now*; several calls started together each see the same room, all pass, and
their KV caches then outgrow it together (a dead process, or every answer cut
short). So every generation with an estimate reserves it here before it
allocates, and gives it back when it ends, whatever way it ends:

* **Fits now**: the room left, less what the calls in flight will still
  take (their reservations less what they already hold), holds the estimate.
  The common case costs one uncontended lock.
* **Fits alone, not now**: the call waits its turn, first come first served
  (a large request is never starved by small ones behind it), until it fits,
  up to the wait limit; then ``MemoryError``. Waiting holds no lock a
  finishing call needs (``Condition.wait`` releases it) and polls, so a
  reservation dropped by the garbage collector, a deadline or a cancellation
  is noticed within :data:`POLL` seconds.
* **Can never fit**: ``MemoryError`` at once, naming both figures, before
  anything is allocated.

Before it refuses or keeps a call waiting on an idle ledger, the ledger gives
memory back to the system (mlx's cache of freed buffers, glibc's freed heap)
and looks again: under ``RLIMIT_AS`` or a cgroup limit that memory counts as
used until it is returned. A reservation that is dropped without being
released (a stream abandoned unstarted) leaves the ledger when it is garbage
collected: the ledger holds reservations weakly.
"""

from __future__ import annotations

import collections
import threading
import time
import weakref
from collections.abc import Callable
from typing import NamedTuple

from ..._retry import DoNotRetry
from . import _budget

__all__ = [
    "POLL",
    "Ledger",
    "MemoryRefused",
    "Reservation",
    "Room",
    "ledger",
]

#: How often a waiting call looks again without being woken (seconds).
POLL = 0.05
clock = time.monotonic


class MemoryRefused(MemoryError, DoNotRetry):
    """Out of memory for a reason no smaller retry can fix here.

    Raised when waiting for memory ran out of time, or when shortening is
    switched off (``memory_shorten=False``): the retry ladder must not turn
    it into a shortened answer. Still a ``MemoryError`` for the caller.
    """


class Reservation:
    """Memory a generation may still take: ``total`` less what it ``held``."""

    __slots__ = ("__weakref__", "held", "total")

    def __init__(self, total: int) -> None:
        self.total = total
        self.held = 0

    def outstanding(self) -> int:
        """What this generation has reserved and not allocated yet (bytes)."""
        return self.total - self.held if self.held < self.total else 0


class Room(NamedTuple):
    """How the ledger reads and frees memory (the guard's functions).

    ``read`` reads the budget again; ``free`` gives cached memory back to the
    system and says whether there was any; ``reclaimable`` is what ``free``
    could give back (bytes). Only the slow path calls them.
    """

    read: Callable[[], _budget.Budget | None]
    free: Callable[[], bool]
    reclaimable: Callable[[], int]


class _Ask(NamedTuple):
    """One call's request, as :meth:`Ledger.admit` received it."""

    need: int
    room: Room
    wait: float | None
    stop: Callable[[], BaseException | None]
    describe: Callable[[int, _budget.Budget, str], str]


class Ledger:
    """The process's reservations and the queue of calls waiting for memory.

    ``free_memory`` gives cached memory back to the system and says whether
    there was any (the guard passes mlx's ``clear_cache``); it runs only on
    the slow path.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._active: weakref.WeakSet[Reservation] = weakref.WeakSet()
        self._queue: collections.deque[object] = collections.deque()
        self.admitted = 0
        self.waited = 0
        self.refused = 0

    # -- reading ----------------------------------------------------------

    def _taken(self, fixed: bool, mine: Reservation | None = None) -> int:
        """What the calls in flight (but ``mine``) still take from the room.

        With a fixed budget (``memory_limit``) nothing they allocate shows in
        the room, so their whole reservations count; with the system's
        figures what they hold already left the room, so only the rest does.
        """
        if fixed:
            return sum(r.total for r in self._active if r is not mine)
        return sum(r.outstanding() for r in self._active if r is not mine)

    def room_for(self, budget: _budget.Budget, mine: Reservation) -> int:
        """The room ``mine`` may still grow into, the others' growth set aside."""
        room = budget.room or 0
        return room - self._taken(budget.source == "memory_limit", mine)

    def alone(self, mine: Reservation) -> bool:
        """Whether no reservation but ``mine`` is in flight."""
        return all(r is mine for r in self._active)

    def snapshot(self) -> dict[str, int]:
        """Reserved, in flight and waiting now, with counts since start."""
        with self._cond:
            active = list(self._active)
            return {
                "in_flight": len(active),
                "reserved": sum(r.total for r in active),
                "outstanding": sum(r.outstanding() for r in active),
                "waiting": len(self._queue),
                "admitted": self.admitted,
                "waited": self.waited,
                "refused": self.refused,
            }

    def waiting(self) -> int:
        """Calls waiting for memory now (a gauge; no lock: one ``len``)."""
        return len(self._queue)

    # -- admission ----------------------------------------------------------

    def _grant(self, need: int) -> Reservation:
        reservation = Reservation(need)
        self._active.add(reservation)
        self.admitted += 1
        return reservation

    def admit(
        self,
        need: int,
        budget: _budget.Budget,
        *,
        room: Room,
        wait: float | None,
        stop: Callable[[], BaseException | None],
        describe: Callable[[int, _budget.Budget, str], str],
    ) -> tuple[Reservation, float]:
        """Reserve ``need`` bytes; return the reservation and the seconds waited.

        ``budget`` is the room just read. ``wait`` is the longest wait
        (``None``: no limit; ``0``: never wait). ``stop`` is asked while
        waiting and returns the error to raise (a deadline passed, the call
        cancelled) or ``None``. ``describe(need, budget, why)`` words the
        ``MemoryError``.

        Raises:
            MemoryError: the call can never fit (retryable: a smaller call
                may), or it did not fit within ``wait`` (``MemoryRefused``).

        """
        with self._cond:
            if not self._queue and self._fits(need, budget):
                return self._grant(need), 0.0
            if self._never_fits(need, budget, room):
                self.refused += 1
                raise MemoryError(describe(need, budget, "never"))
        ask = _Ask(need, room, wait, stop, describe)
        return self._wait(ask, budget)

    def _fits(self, need: int, budget: _budget.Budget) -> bool:
        """``need`` fits the room less what the calls in flight will still take."""
        taken = self._taken(budget.source == "memory_limit")
        return need <= (budget.room or 0) - taken

    def _fits_now(
        self, need: int, budget: _budget.Budget, room: Room
    ) -> tuple[bool, _budget.Budget]:
        """Whether ``need`` fits now; frees cached memory once if it would help."""
        if self._fits(need, budget):
            return True, budget
        if budget.source != "memory_limit" and room.free():
            budget = room.read() or budget
            return self._fits(need, budget), budget
        return False, budget

    def _never_fits(self, need: int, budget: _budget.Budget, room: Room) -> bool:
        """``need`` exceeds the room even with all memory in use given back.

        An upper bound on the room of an idle process: the room now, every
        reservation in flight, and what freeing the caches could return.
        """
        if budget.source == "memory_limit":
            return need > (budget.room or 0)
        back = sum(r.total for r in self._active) + room.reclaimable()
        return need > (budget.room or 0) + back

    def _wait(self, ask: _Ask, budget: _budget.Budget) -> tuple[Reservation, float]:
        """The slow path of :meth:`admit`: queue, and take the turn when it fits."""
        need, room, wait, stop, describe = ask
        started = clock()
        until = None if wait is None else started + wait
        ticket = object()
        cond = self._cond
        with cond:
            self._queue.append(ticket)
            try:
                while True:
                    if self._queue[0] is ticket:
                        budget = room.read() or budget
                        fits, budget = self._fits_now(need, budget, room)
                        if fits:
                            self._queue.popleft()
                            if clock() > started + POLL:
                                self.waited += 1
                            return self._grant(need), clock() - started
                        if not self._active:  # alone, and still too big
                            self.refused += 1
                            raise MemoryError(describe(need, budget, "alone"))
                        if self._never_fits(need, budget, room):
                            self.refused += 1
                            raise MemoryError(describe(need, budget, "never"))
                    halt = stop()
                    if halt is not None:
                        raise halt
                    now = clock()
                    if until is not None and now >= until:
                        self.refused += 1
                        held = self._taken(budget.source == "memory_limit")
                        why = (
                            f"waited {now - started:.1f} s; {len(self._active)} "
                            f"generation(s) in flight will still take "
                            f"{held / 2**20:.1f} MiB of it"
                        )
                        raise MemoryRefused(describe(need, budget, why))
                    left = POLL if until is None else min(POLL, until - now)
                    cond.wait(max(left, 0.0))
            finally:
                if ticket in self._queue:
                    self._queue.remove(ticket)
                cond.notify_all()

    def release(self, reservation: Reservation) -> None:
        """Give ``reservation`` back and wake the waiting calls."""
        with self._cond:
            self._active.discard(reservation)
            if self._queue:
                self._cond.notify_all()


#: The process's one ledger.
ledger = Ledger()
