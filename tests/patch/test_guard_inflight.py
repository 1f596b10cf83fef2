"""The in-flight check on its own: which room a growth is judged against.

Against the system's figures (``RLIMIT_AS``, cgroup, ``MemAvailable``) a
growth that stays within the call's own reservation is judged against the
measured room alone: admission already set that memory aside for it, next to
the others' reservations. A growth past its reservation (the estimate was
short) must also leave what the other calls will still take. Under load the
capped tests reach both paths by chance; here a faked budget reaches each
for certain (the first failed on 0.7.10 in CI before the rule: a call was
refused at its last growth, "needs 30 MiB, 18.2 MiB left").
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mlx_vlm_safe._patch._memory import _budget, _estimate
from mlx_vlm_safe._patch._memory import _guard as guard
from mlx_vlm_safe._patch._memory._ledger import Reservation, ledger

KIB = 2**10
ARCH = _estimate.Architecture(kv_bytes_per_position=KIB, layers=4, model_type="fake")
#: 10 prompt tokens and up to 500 more: a 512-position cache at the end.
FOUND = _estimate.Estimate(
    total=600 * KIB,
    kv_cache=512 * KIB,
    prefill=0,
    prompt_tokens=10,
    positions=510,
    capacity=512,
)
#: After 200 tokens the check looks 64 ahead, into the 512-position cache:
#: 512 KiB of new buffers, 768 KiB with the previous capacity still mapped.
ITEMS = 200
NEED = 512 * KIB
FOOTPRINT = 768 * KIB
#: Measured room: enough for the growth, not for the growth and the others.
ROOM = 600 * KIB
OTHERS = 10 * 2**20


@pytest.fixture
def others() -> Iterator[Reservation]:
    """Another call in flight that will still take 10 MiB."""
    other = ledger._grant(OTHERS)
    yield other
    ledger.release(other)


@pytest.fixture(autouse=True)
def _measured_room(monkeypatch: pytest.MonkeyPatch) -> None:
    budget = _budget.Budget(ROOM, "RLIMIT_AS", {"RLIMIT_AS": ROOM}, 0)
    monkeypatch.setattr(_budget, "read_budget", lambda current=None: budget)
    monkeypatch.setattr(guard, "_freed_cache", lambda: False)


def _check(reservation: Reservation) -> None:
    guard._check(
        found=FOUND,
        arch=ARCH,
        items=ITEMS,
        jump=0,
        grown=0,
        reservation=reservation,
    )


def test_the_figures_are_what_the_model_says() -> None:
    assert guard._need(FOUND, ARCH, ITEMS, 0, capped=False) == NEED
    ahead = ITEMS + 2 * guard.CHECK_EVERY
    assert _estimate.footprint(FOUND, ARCH, ahead, mlx_figures=False) == FOOTPRINT
    assert NEED <= ROOM < NEED + OTHERS


def test_a_growth_within_its_own_reservation_is_judged_by_the_measured_room(
    others: Reservation,
) -> None:
    mine = ledger._grant(FOOTPRINT)
    try:
        _check(mine)  # 512 KiB needed, 600 KiB there: no MemoryError
        assert mine.held == _estimate.held(FOUND, ARCH, ITEMS, FOOTPRINT)
    finally:
        ledger.release(mine)
    assert others.outstanding() == OTHERS


def test_a_growth_past_its_reservation_leaves_the_others_their_share(
    others: Reservation,
) -> None:
    mine = ledger._grant(FOOTPRINT - 1)  # the estimate fell one byte short
    try:
        with pytest.raises(MemoryError) as caught:
            _check(mine)
    finally:
        ledger.release(mine)
    message = str(caught.value)
    assert f"after {ITEMS} tokens" in message
    assert "what the other generations in flight will still take" in message
    assert others.outstanding() == OTHERS


def test_alone_the_same_growth_past_its_reservation_fits() -> None:
    mine = ledger._grant(FOOTPRINT - 1)
    try:
        _check(mine)  # nobody else in flight: the measured room is all its own
    finally:
        ledger.release(mine)
