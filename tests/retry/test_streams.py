"""The stream path (``stream_with_retry``): retried only before the first item."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given

from mlx_vlm_safe import last_attempts, retry
from mlx_vlm_safe._retry import stream_with_retry

from ._fakes import SPEC, fast
from ._schedules import SETTINGS, cases, check


@SETTINGS
@given(cases())
def test_stream_engine_property(case: dict[str, Any]) -> None:
    check(case, stream=True)


def test_a_stream_recovers_before_its_first_item_and_closes_early() -> None:
    finished: list[str] = []

    def stream_generate(max_tokens: int = 2048) -> Iterator[int]:
        try:
            if not finished:
                finished.append("failed")
                raise RuntimeError("[metal::malloc] Attempting to allocate 8 bytes")
            yield from range(max_tokens)
        finally:
            finished.append("closed")

    wrapped = retry(policy=fast())(stream_generate)
    stream = wrapped(max_tokens=1000)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()  # type: ignore[attr-defined]
    assert finished == ["failed", "closed", "closed"]
    first, second = last_attempts()
    assert (first.error_type, first.tokens) == ("RuntimeError", 0)
    assert (second.changes, second.tokens) == ({"max_tokens": 512}, 3)


def test_a_stream_error_after_the_first_item_propagates_unchanged() -> None:
    error = MemoryError("late")

    def stream_generate() -> Iterator[str]:
        yield "a"
        raise error

    received: list[str] = []
    stream = stream_with_retry(stream_generate, (), {}, spec=SPEC, policy=fast())
    with pytest.raises(MemoryError) as info:
        received.extend(stream)
    assert info.value is error
    assert received == ["a"]
    assert getattr(error, "__notes__", []) == []
    (record,) = last_attempts()
    assert (record.error_type, record.tokens) == ("MemoryError", 1)


def test_an_empty_stream_is_retried_and_finally_ends_empty() -> None:
    calls: list[int] = []

    @retry(policy=fast())
    def stream_generate() -> Iterator[str]:
        calls.append(1)
        yield from ()

    assert list(stream_generate()) == []
    assert len(calls) == 3
