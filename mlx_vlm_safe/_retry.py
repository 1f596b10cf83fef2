"""Retry what can succeed on retry, with less work; the engine and ``@retry``.

``call_with_retry`` and ``stream_with_retry`` know nothing about mlx-vlm: the
caller describes its target with a ``CallSpec``. ``retry`` derives the spec
from a signature. Rules, each answering a known complaint about retry wrappers:

* Only ``Exception`` is caught; ``KeyboardInterrupt``, ``SystemExit`` and
  ``GeneratorExit`` pass through untouched, during attempts and waits alike.
* The caller gets its own exception object back (``except ValueError:`` keeps
  working) carrying the history; never a wrapper type, never ``None``.
* The happy path is one ``ContextVar`` read, one set, two clock reads and the
  call; everything else lives in ``_loop`` and runs only after a failure.
* Nested loops collapse: while a loop runs an attempt, retry-managed calls
  inside it run once (retries at several layers multiply attempts).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ParamSpec, TypeVar, overload

import wrapt

from ._ladder import CallSpec, ladder_changes
from ._loop import (
    DEFAULT_RUNTIME,
    Overrides,
    RetryLoop,
    Runtime,
    interrupted,
    is_empty,
    last_attempts,
    new_state,
    records_of,
    tokens_of,
)
from ._policy import STATE, CallState, RetryPolicy
from ._records import AttemptRecord, RetryDetails, RetryHook

__all__ = [
    "AttemptRecord",
    "CallSpec",
    "RetryDetails",
    "RetryHook",
    "Runtime",
    "call_with_retry",
    "ladder_changes",
    "last_attempts",
    "retry",
    "stream_with_retry",
]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
_get_state, _set_state = STATE.get, STATE.set
_NOTHING: Any = object()  # a stream attempt that ended before its first item
_Policy = RetryPolicy | Overrides | None


def call_with_retry(
    fn: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    *,
    spec: CallSpec,
    policy: RetryPolicy | None = None,
    runtime: Runtime | None = None,
) -> T:
    """Call ``fn(*args, **kwargs)``; retry failures and empty results that can pass.

    ``policy=None`` means the process-wide default, read at failure time so
    ``configure()`` applies to calls already wrapped. Attempt 1 receives the
    very ``args`` and ``kwargs`` objects given.
    """
    if _get_state().active:  # inside another loop's attempt, or disabled
        return fn(*args, **kwargs)
    rt = runtime or DEFAULT_RUNTIME
    clock = rt.clock
    state = CallState()
    state.active = True
    _set_state(state)
    state.started = clock()
    try:
        result = fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - classified in the retry loop
        outcome: Any = exc
        failed = True
    except BaseException as exc:
        interrupted(state, exc, clock)
        raise
    else:
        state.ended = clock()
        if not is_empty(spec.is_empty, result):
            if spec.progress is not None:
                state.tokens = tokens_of(spec)
            state.active = False
            return result
        outcome, failed = result, False
    state.ended = clock()
    # Outside the except block on purpose: a later attempt's exception must not
    # chain to this one, which must be freeable before the next attempt.
    loop = RetryLoop(
        _caller(fn),
        args,
        kwargs,
        spec=spec,
        empty=spec.is_empty,
        policy=policy,
        state=state,
        rt=rt,
    )
    return loop.run(outcome, failed)  # type: ignore[no-any-return]


def _caller(fn: Callable[..., Any]) -> Callable[[tuple[Any, ...], dict[str, Any]], Any]:
    return lambda args, kwargs: fn(*args, **kwargs)


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
    return _stream(fn, args, kwargs, spec, policy=policy, rt=runtime or DEFAULT_RUNTIME)


def _stream(
    fn: Callable[..., Iterator[Any]],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    spec: CallSpec,
    *,
    policy: _Policy,
    rt: Runtime,
) -> Iterator[Any]:
    if STATE.get().active:
        yield from fn(*args, **kwargs)
        return
    clock = rt.clock
    state = new_state()
    state.started = clock()
    attempt = _first_item(fn)
    try:
        outcome: Any = attempt(args, kwargs)
        failed = False
    except Exception as exc:  # noqa: BLE001 - classified in the retry loop
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
    count, error = 1, None
    try:
        yield first
        for item in it:
            count += 1
            yield item
    except GeneratorExit:  # closed early by the consumer: not an error
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


@overload
def retry(func: Callable[P, R], /) -> Callable[P, R]: ...
@overload
def retry(
    func: None = None, /, *, policy: RetryPolicy | None = None, **policy_overrides: Any
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...
def retry(
    func: Callable[..., Any] | None = None,
    /,
    *,
    policy: RetryPolicy | None = None,
    **policy_overrides: Any,
) -> Any:
    """Retry ``func`` under a policy: ``@retry`` or ``@retry(attempts=5, ...)``.

    ``policy_overrides`` are ``RetryPolicy`` fields, checked now. Without
    ``policy`` they apply over the process-wide default at call time, so
    ``configure()`` still governs the other fields. Works on functions, methods
    and generator functions (which get ``stream_with_retry`` semantics). Plain
    functions have no generic notion of "empty": use ``call_with_retry`` with
    ``CallSpec(is_empty=...)`` for that.
    """
    chosen: _Policy = policy
    if policy_overrides:
        overrides = Overrides(policy_overrides)
        chosen = overrides.over(policy) if policy is not None else overrides

    def decorate(target: Callable[..., Any]) -> Any:
        return _wrap(target, chosen)

    return decorate if func is None else decorate(func)


def _wrap(target: Any, policy: _Policy) -> Any:
    inner = (
        target.__func__ if isinstance(target, classmethod | staticmethod) else target
    )
    if inspect.iscoroutinefunction(inner) or inspect.isasyncgenfunction(inner):
        raise TypeError(f"retry() does not support async callables: {inner!r}")
    plain = CallSpec.from_callable(inner)
    bound = (
        plain
        if isinstance(target, staticmethod)
        else CallSpec.from_callable(inner, bound=True)
    )
    rt = DEFAULT_RUNTIME  # bound at decoration; tests swap it before decorating
    if inspect.isgeneratorfunction(inner):

        def stream_wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            spec = plain if instance is None else bound
            return _stream(wrapped, args, kwargs, spec, policy=policy, rt=rt)

        return wrapt.FunctionWrapper(target, stream_wrapper)

    get_state, set_state, new, clock = _get_state, _set_state, CallState, rt.clock

    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        # The happy path of ``call_with_retry``, inlined and with every name
        # bound locally: this is the per-call cost users pay.
        if get_state().active:
            return wrapped(*args, **kwargs)
        state = new()
        state.active = True
        set_state(state)
        state.started = clock()
        try:
            result = wrapped(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - classified in the retry loop
            outcome: Any = exc
        except BaseException as exc:
            interrupted(state, exc, clock)
            raise
        else:
            state.ended = clock()
            state.active = False
            return result
        state.ended = clock()
        spec = plain if instance is None else bound
        loop = RetryLoop(
            _caller(wrapped),
            args,
            kwargs,
            spec=spec,
            empty=None,
            policy=policy,
            state=state,
            rt=rt,
        )
        return loop.run(outcome, failed=True)

    return wrapt.FunctionWrapper(target, wrapper)
