"""The memory ledger on its own: admission, waiting, FIFO, release, no leaks.

A fixed budget (the ``memory_limit`` source: the room is a number, not a
reading of the system) makes every outcome exact. The real-model and
capped-process tests are in ``test_memory_load.py``.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlx_vlm_safe._patch._memory import _budget
from mlx_vlm_safe._patch._memory._ledger import Ledger, MemoryRefused, Room
from mlx_vlm_safe._retry import Verdict, explain

BUDGET = 100


def _budget_of(room: int) -> _budget.Budget:
    return _budget.Budget(room, "memory_limit", {"memory_limit": room}, 0)


def _room(room: int = BUDGET) -> Room:
    return Room(read=lambda: _budget_of(room), free=lambda: False, reclaimable=int)


def _admit(
    ledger: Ledger,
    need: int,
    *,
    wait: float | None = 5.0,
    stop: Callable[[], BaseException | None] = lambda: None,
) -> object:
    reservation, _ = ledger.admit(
        need,
        _budget_of(BUDGET),
        room=_room(),
        wait=wait,
        stop=stop,
        describe=lambda need, budget, why: f"{need} > {budget.room}: {why}",
    )
    return reservation


def test_what_fits_is_granted_at_once_and_given_back() -> None:
    ledger = Ledger()
    first = _admit(ledger, 60)
    second = _admit(ledger, 40)
    assert ledger.snapshot()["reserved"] == 100
    ledger.release(first)  # type: ignore[arg-type]
    ledger.release(second)  # type: ignore[arg-type]
    assert ledger.snapshot()["reserved"] == 0
    assert ledger.snapshot()["admitted"] == 2


def test_what_can_never_fit_fails_at_once_naming_both_figures() -> None:
    ledger = Ledger()
    held = _admit(ledger, 50)
    started = time.monotonic()
    with pytest.raises(MemoryError, match="101 > 100: never"):
        _admit(ledger, 101)
    assert time.monotonic() - started < 1.0  # never waited for the 50 to end
    assert explain(MemoryError("x")).verdict is Verdict.RETRY  # a smaller may fit
    ledger.release(held)  # type: ignore[arg-type]


def test_a_call_that_fits_alone_waits_for_room_then_runs() -> None:
    ledger = Ledger()
    held = _admit(ledger, 80)
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(_admit(ledger, 50)))
    waiter.start()
    time.sleep(0.2)
    assert not got
    assert ledger.snapshot()["waiting"] == 1
    ledger.release(held)  # type: ignore[arg-type]
    waiter.join(5)
    assert got
    assert ledger.snapshot()["reserved"] == 50


def test_the_wait_is_bounded_and_the_refusal_is_not_retried() -> None:
    ledger = Ledger()
    held = _admit(ledger, 80)
    with pytest.raises(MemoryRefused, match="waited") as caught:
        _admit(ledger, 50, wait=0.2)
    assert isinstance(caught.value, MemoryError)
    assert explain(caught.value).verdict is Verdict.NEVER
    with pytest.raises(MemoryRefused):  # memory_wait=0: fail fast
        _admit(ledger, 50, wait=0)
    assert ledger.snapshot()["waiting"] == 0
    ledger.release(held)  # type: ignore[arg-type]


def test_a_stop_ends_the_wait_with_its_own_error() -> None:
    ledger = Ledger()
    held = _admit(ledger, 80)
    with pytest.raises(TimeoutError, match="deadline"):
        _admit(ledger, 50, stop=lambda: TimeoutError("deadline"))
    assert ledger.snapshot()["waiting"] == 0
    ledger.release(held)  # type: ignore[arg-type]


def test_a_dropped_reservation_leaves_when_collected() -> None:
    ledger = Ledger()
    _admit(ledger, 80)  # never released: the caller dropped it
    gc.collect()
    assert ledger.snapshot()["reserved"] == 0
    assert _admit(ledger, 90) is not None


def test_first_come_first_served() -> None:
    """A large request at the head is not overtaken by small ones behind it."""
    ledger = Ledger()
    held = _admit(ledger, 60)
    order: list[str] = []
    lock = threading.Lock()

    def request(name: str, need: int) -> None:
        reservation = _admit(ledger, need)
        with lock:
            order.append(name)
        time.sleep(0.05)
        ledger.release(reservation)  # type: ignore[arg-type]

    big = threading.Thread(target=request, args=("big", 90))
    big.start()
    time.sleep(0.1)  # the big one is queued first
    small = threading.Thread(target=request, args=("small", 30))
    small.start()
    time.sleep(0.2)
    assert order == []  # 30 would fit next to the 60, but the 90 came first
    ledger.release(held)  # type: ignore[arg-type]
    big.join(5)
    small.join(5)
    assert order == ["big", "small"]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    requests=st.lists(
        st.tuples(
            st.integers(1, BUDGET),  # need
            st.sampled_from(["release", "drop", "hold-then-release"]),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_reservations_never_exceed_the_budget_and_never_leak(
    requests: list[tuple[int, str]],
) -> None:
    """Concurrent reserve/release/drop sequences: the invariant and no leak.

    Every request fits alone, so every one is served (no deadlock, no
    refusal); at no moment do the granted reservations add up to more than
    the budget; afterwards nothing is reserved and nobody waits.
    """
    ledger = Ledger()
    in_use = [0]
    worst = [0]
    lock = threading.Lock()
    errors: list[BaseException] = []

    def request(need: int, how: str) -> None:
        try:
            reservation = _admit(ledger, need, wait=30)
            with lock:
                in_use[0] += need
                worst[0] = max(worst[0], in_use[0])
            time.sleep(0.002)
            with lock:
                in_use[0] -= need
            if how == "drop":
                del reservation
                gc.collect()
                with ledger._cond:  # the waiters poll: wake them now
                    ledger._cond.notify_all()
            else:
                ledger.release(reservation)  # type: ignore[arg-type]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=request, args=r) for r in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(t.is_alive() for t in threads), "deadlock"
    assert not errors, errors
    assert worst[0] <= BUDGET
    gc.collect()
    snapshot = ledger.snapshot()
    assert snapshot["reserved"] == 0
    assert snapshot["waiting"] == 0
    assert snapshot["admitted"] == len(requests)
