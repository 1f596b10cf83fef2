"""Per-call state: ``last_attempts`` per thread and task, nesting, disabling."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from mlx_vlm_safe import last_attempts, retry
from mlx_vlm_safe import retries_disabled as disabled
from mlx_vlm_safe._retry import call_with_retry

from ._fakes import SPEC, Flaky, fast


def test_retries_disabled_calls_once_and_plainly() -> None:
    flaky = Flaky(MemoryError(), MemoryError())
    wrapped = retry(policy=fast())(flaky)
    with disabled():
        with pytest.raises(MemoryError) as info:
            wrapped()
        assert last_attempts() == ()
    assert len(flaky.calls) == 1
    assert not hasattr(info.value, "mlx_vlm_safe_attempts")
    assert wrapped() == "ok"


def test_nested_retry_loops_collapse_into_the_outer_one() -> None:
    inner_calls: list[int] = []

    @retry(policy=fast(attempts=3))
    def inner() -> str:
        inner_calls.append(1)
        raise MemoryError

    @retry(policy=fast(attempts=3))
    def outer() -> str:
        return call_with_retry(inner, (), {}, spec=SPEC, policy=fast())

    @retry(policy=fast(attempts=3))
    def streaming() -> Iterator[str]:
        yield inner()

    with pytest.raises(MemoryError):
        outer()
    assert len(inner_calls) == 3  # not 3 x 3 x 3
    assert [r.number for r in last_attempts()] == [1, 2, 3]
    inner_calls.clear()
    with pytest.raises(MemoryError):
        list(streaming())
    assert len(inner_calls) == 3


def test_last_attempts_after_a_plain_success_and_per_thread() -> None:
    assert retry(lambda: 5)() == 5
    (record,) = last_attempts()
    assert (record.number, record.error_type, dict(record.changes)) == (1, None, {})
    assert record.duration >= 0
    assert record.waited == 0.0
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(len(last_attempts())))
    thread.start()
    thread.join()
    assert seen == [0]
    assert last_attempts() == (record,)


def test_last_attempts_is_per_asyncio_task() -> None:
    ok = retry(policy=fast())(Flaky())

    async def task(errors: int) -> int:
        flaky = retry(policy=fast())(Flaky(*[MemoryError()] * errors))
        flaky()
        await asyncio.sleep(0.01)  # let the other task run its own call
        ok()
        await asyncio.sleep(0)
        return len(last_attempts())

    async def main() -> list[int]:
        return list(await asyncio.gather(task(2), task(0)))

    assert asyncio.run(main()) == [1, 1]
