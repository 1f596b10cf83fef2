"""Streams: retry what fails before the first item, never after it.

Once an item has reached the consumer, retrying would yield text twice, so a
later error propagates unchanged. Before that, a failure or an empty stream is
just a failed attempt, retried by the same loop as a call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from ._context import STATE, CallState, interrupted, new_state, records_of
from ._failures import (
    DEFAULT_RUNTIME,
    RetryLoop,
    Runtime,
    settled_at_once,
    tokens_of,
)
from ._ladder import CallSpec
from ._policy import PolicyLike, RetryPolicy

__all__ = ["stream_engine", "stream_with_retry"]

T = TypeVar("T")
_NOTHING: Any = object()  # a stream attempt that ended before its first item


def stream_with_retry(
    fn: Callable[..., Iterator[T]],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    *,
    spec: CallSpec,
    policy: RetryPolicy | None = None,
    runtime: Runtime | None = None,
) -> Iterator[T]:
    """Iterate ``fn(*args, **kwargs)``, retrying failures before the first item.

    A failure, or an empty stream (if ``retry_empty``), before the first item
    is retried under the policy. Once an item has been yielded nothing is
    retried and a later error propagates unchanged, so no text is ever yielded
    twice. Closing the returned generator closes the underlying iterator.
    """
    return stream_engine(
        fn, args, kwargs, spec, policy=policy, rt=runtime or DEFAULT_RUNTIME
    )


def stream_engine(
    fn: Callable[..., Iterator[Any]],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    spec: CallSpec,
    *,
    policy: PolicyLike,
    rt: Runtime,
) -> Iterator[Any]:
    """Run the stream under the retry policy (``PolicyLike``: see ``_policy``).

    Shared by ``stream_with_retry`` and generator functions under ``@retry``.
    Nested inside another loop's attempt, or with retries disabled, it just
    delegates to the stream.
    """
    previous = STATE.get()
    if previous.active:
        yield from fn(*args, **kwargs)
        return
    clock = rt.clock
    state = new_state()
    state.started = clock()
    attempt = _first_item(fn)
    try:
        outcome: Any = attempt(args, kwargs)
        failed = False
    except Exception as exc:
        if settled_at_once(exc, policy, state, clock, spec.rules):
            raise
        outcome, failed = exc, True
    except BaseException as exc:
        interrupted(state, exc, clock)
        raise
    state.ended = clock()
    if failed or outcome is _NOTHING:
        loop = RetryLoop(
            attempt,
            args,
            kwargs,
            spec=spec,
            empty=_is_nothing,
            policy=policy,
            state=state,
            rt=rt,
            stream=True,
        )
        outcome = loop.run(outcome, failed)
        if outcome is _NOTHING:
            return
    else:
        state.tokens = tokens_of(spec) if spec.progress is not None else 1
        state.active = False
    it, first = outcome
    del outcome
    yield from _deliver(it, first, state, spec, clock)


def _deliver(
    it: Iterator[Any], first: Any, state: CallState, spec: CallSpec, clock: Any
) -> Iterator[Any]:
    """Yield the first item and the rest; record how the stream ended."""
    count, error, at_yield = 1, None, True
    try:
        yield first
        at_yield = False
        for item in it:
            count += 1
            at_yield = True
            yield item
            at_yield = False
    except GeneratorExit:
        # At our ``yield`` it is the consumer closing the stream early: not an
        # error. Anywhere else the generation itself raised it.
        if not at_yield:
            error = "GeneratorExit"
        raise
    except BaseException as exc:
        error = type(exc).__name__
        raise
    finally:
        _finish_stream(state, spec, count, error, clock)
        close = getattr(it, "close", None)
        if close is not None:
            close()


def _first_item(fn: Callable[..., Iterator[Any]]) -> Callable[..., Any]:
    """One stream attempt: start the iterator and pull its first item."""

    def attempt(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        it = iter(fn(*args, **kwargs))
        try:
            return it, next(it)
        except StopIteration:
            return _NOTHING

    return attempt


def _is_nothing(outcome: object) -> bool:
    return outcome is _NOTHING


def _finish_stream(
    state: CallState, spec: CallSpec, count: int, error: str | None, clock: Any
) -> None:
    """Complete the final record when the stream ends, fails or is closed.

    Mutates the call's own state object, never the ``ContextVar``, so it is
    safe even when the generator is finalised in another context.
    """
    records = records_of(state)
    last = records[-1]
    tokens = tokens_of(spec) if spec.progress is not None else count
    duration = last.duration + (clock() - state.ended)
    final = last._replace(duration=duration, tokens=tokens, error_type=error)
    state.records = (*records[:-1], final)
