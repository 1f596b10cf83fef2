"""``agenerate()`` / ``astream_generate()`` on the real release (issue 17).

The awaiting task is cancelled the ways async apps cancel it
(``asyncio.wait_for``, a task's ``cancel()``, leaving an ``async for``);
the real generation running in the worker thread must stop within one token.
Tokens are counted at the release's own ``generate_step``
(``counting_tokens``), so "stopped" means the model stopped, not just that
the caller stopped listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

import mlx_vlm_safe
from mlx_vlm_safe._patch import text_of
from tests.conftest import counting_tokens

pytestmark = pytest.mark.model

LONG = 100_000


def _long_enough(release: Any) -> None:
    # tools/matrix.py deselects these tests where max_tokens is ignored.
    assert release.tokens_for(LONG) == LONG, "deselect it (NO_MAX_TOKENS_TESTS)"


def _args(tiny: Any, max_tokens: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (tiny.model, tiny.processor, tiny.prompt), {
        "image": tiny.image,
        "max_tokens": max_tokens,
    }


async def _settle(seen: Any) -> int:
    """Tokens made from now until the worker has stopped (0.5 s of quiet)."""
    start = seen.tokens
    last, quiet_since = start, time.monotonic()
    while time.monotonic() - quiet_since < 0.5:
        await asyncio.sleep(0.05)
        if seen.tokens != last:
            last, quiet_since = seen.tokens, time.monotonic()
    return last - start


def test_agenerate_returns_what_generate_returns(tiny: Any, mlx_vlm: Any) -> None:
    args, kwargs = _args(tiny, 8)
    result = asyncio.run(mlx_vlm_safe.agenerate(*args, verbose=False, **kwargs))
    assert result is not None
    direct = tiny.call(mlx_vlm.generate)
    assert type(result) is type(direct)  # the release's own shape
    assert text_of(result) == text_of(direct)  # timings differ, the text not


def test_wait_for_stops_the_worker_within_one_token(tiny: Any, release: Any) -> None:
    _long_enough(release)
    args, kwargs = _args(tiny, LONG)

    async def main() -> int:
        with counting_tokens() as seen:
            with pytest.raises((asyncio.TimeoutError, TimeoutError)):
                await asyncio.wait_for(
                    mlx_vlm_safe.agenerate(*args, verbose=False, **kwargs), 1.0
                )
            after = await _settle(seen)
            assert seen.tokens > 0  # it was generating
            return after

    after = asyncio.run(main())
    print(f"\ntokens after the cancel: {after}")
    assert after <= 2, after  # the token being made, at most one more


def test_a_deadline_block_limits_the_worker(tiny: Any, release: Any) -> None:
    """The caller's deadline() follows the call into the worker thread."""
    _long_enough(release)
    args, kwargs = _args(tiny, LONG)

    async def main() -> None:
        with mlx_vlm_safe.deadline(1), pytest.raises(TimeoutError, match="deadline"):
            await mlx_vlm_safe.agenerate(*args, verbose=False, **kwargs)

    started = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - started < 6.0


def test_astream_generate_streams_and_stops_when_left(
    tiny: Any, exports: Any, release: Any
) -> None:
    _long_enough(release)
    expected = [getattr(i, "text", i) for i in tiny.stream(exports.stream_generate)]
    args, kwargs = _args(tiny, 8)

    async def main() -> int:
        got = [
            getattr(i, "text", i)
            async for i in mlx_vlm_safe.astream_generate(*args, **kwargs)
        ]
        assert got == expected
        long_args, long_kwargs = _args(tiny, LONG)
        with counting_tokens() as seen:
            stream = mlx_vlm_safe.astream_generate(*long_args, **long_kwargs)
            async with contextlib.aclosing(stream):
                async for _ in stream:
                    if seen.tokens >= 5:
                        break
            return await _settle(seen)

    after = asyncio.run(main())
    assert after <= 2, after


def test_a_cancelled_consumer_task_stops_the_stream(tiny: Any, release: Any) -> None:
    """A client disconnect in Starlette cancels the task that iterates."""
    _long_enough(release)
    args, kwargs = _args(tiny, LONG)

    async def consume() -> None:
        async for _ in mlx_vlm_safe.astream_generate(*args, **kwargs):
            pass

    async def main() -> int:
        with counting_tokens() as seen:
            task = asyncio.create_task(consume())
            while seen.tokens < 5:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return await _settle(seen)

    after = asyncio.run(main())
    assert after <= 2, after
