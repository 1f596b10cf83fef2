"""Retry what can succeed on retry, with less work; the engine and ``@retry``.

``call_with_retry`` and ``stream_with_retry`` know nothing about mlx-vlm: the
caller describes its target with a ``CallSpec``. ``retry`` derives the spec
from a signature. Rules, each answering a known complaint about retry wrappers:

* Only ``Exception`` is caught; ``KeyboardInterrupt``, ``SystemExit`` and
  ``GeneratorExit`` pass through untouched, during attempts and waits alike.
* The caller gets its own exception object back (``except ValueError:`` keeps
  working) carrying the history; never a wrapper type, never ``None``.
* The happy path (``call_runner``) is one ``ContextVar`` read, one set, two
  clock reads and the call; everything else lives in ``_loop`` and runs only
  after a failure.
* Nested loops collapse: while a loop runs an attempt, retry-managed calls
  inside it run once (retries at several layers multiply attempts).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

import wrapt

from ._ladder import CallSpec, ladder_changes
from ._loop import (
    DEFAULT_RUNTIME,
    Overrides,
    RetryLoop,
    Runtime,
    predicate_failed,
    settled_at_once,
    tokens_read,
)
from ._policy import RetryPolicy
from ._records import AttemptRecord, RetryDetails, RetryHook
from ._state import STATE, CallState, interrupted, last_attempts
from ._stream import PolicyLike, stream_engine, stream_with_retry

__all__ = [
    "AttemptRecord",
    "CallSpec",
    "RetryDetails",
    "RetryHook",
    "Runtime",
    "call_runner",
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


Runner = Callable[[Callable[..., Any], tuple[Any, ...], Mapping[str, Any]], Any]


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
    very ``args`` and ``kwargs`` objects given. Code that calls the same
    target often should build the runner once with :func:`call_runner`.
    """
    run = call_runner(spec, policy=policy, runtime=runtime)
    return run(fn, args, kwargs)  # type: ignore[no-any-return]


def call_runner(
    spec: CallSpec,
    *,
    policy: PolicyLike = None,
    runtime: Runtime | None = None,
) -> Runner:
    """``call_with_retry`` with ``spec``, ``policy`` and ``runtime`` bound once.

    ``run(fn, args, kwargs)`` is the happy path every retry-managed call pays:
    one ``ContextVar`` read and set, two clock reads, the call, and the spec's
    emptiness and progress readers, with every name bound in the closure and
    no helper frames. Everything else is in ``_loop``, built only after a
    failure. ``@retry`` and the patched ``generate()`` both run on it.
    """
    rt = DEFAULT_RUNTIME if runtime is None else runtime
    clock = rt.clock
    predicate, progress = spec.is_empty, spec.progress
    get_state, set_state, new = _get_state, _set_state, CallState

    def run(fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        previous = get_state()
        if previous.active:  # inside another loop's attempt, or disabled
            return fn(*args, **kwargs)
        state = new()
        state.active = True
        state.end = state.inherited = previous.end
        set_state(state)
        state.started = clock()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            if settled_at_once(exc, policy, state, clock):
                raise
            outcome: Any = exc
            failed = True
        except BaseException as exc:
            interrupted(state, exc, clock)
            raise
        else:
            state.ended = clock()
            try:
                empty = predicate is not None and predicate(result)
            except Exception:  # a broken predicate must not fail the call
                empty = predicate_failed()
            if not empty:
                if progress is not None:
                    state.tokens = tokens_read(progress)
                state.active = False
                return result
            outcome, failed = result, False
        state.ended = clock()
        # Outside the except block on purpose: a later attempt's exception must
        # not chain to this one, which must be freeable before the next attempt.
        loop = RetryLoop(
            _caller(fn),
            args,
            kwargs,
            spec=spec,
            empty=predicate,
            policy=policy,
            state=state,
            rt=rt,
        )
        return loop.run(outcome, failed)

    return run


def _caller(fn: Callable[..., Any]) -> Callable[[tuple[Any, ...], dict[str, Any]], Any]:
    return lambda args, kwargs: fn(*args, **kwargs)


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
    chosen: PolicyLike = policy
    if policy_overrides and policy is not None:
        chosen = dataclasses.replace(policy, **policy_overrides)
    elif policy_overrides:
        chosen = Overrides(policy_overrides)

    def decorate(target: Callable[..., Any]) -> Any:
        return _wrap(target, chosen)

    return decorate if func is None else decorate(func)


_Wrapper = Callable[[Any, Any, tuple[Any, ...], dict[str, Any]], Any]
if TYPE_CHECKING:
    _FunctionWrapper = wrapt.FunctionWrapper[..., Any]
else:
    _FunctionWrapper = wrapt.FunctionWrapper


class _Retrying(_FunctionWrapper):
    """wrapt's FunctionWrapper, called directly without its method probe.

    Called directly, wrapt's C ``__call__`` first looks up ``__self__`` on a
    plain function to find a bound instance; the failed lookup raises and
    clears an ``AttributeError``, about half the wrapper's cost. The retry
    wrapper needs no instance there (its spec comes from what was decorated),
    so a direct call goes straight to it. Bound calls (methods) still go
    through wrapt's binding, which passes the instance.
    """

    _self_run: Runner

    def __init__(self, target: Any, wrapper: _Wrapper, run: Runner) -> None:
        super().__init__(target, wrapper)
        self._self_run = run

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        return self._self_run(self.__wrapped__, args, kwargs)


def _wrap(target: Any, policy: PolicyLike) -> Any:
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
            return stream_engine(wrapped, args, kwargs, spec, policy=policy, rt=rt)

        return wrapt.FunctionWrapper(target, stream_wrapper)

    run_plain = call_runner(plain, policy=policy, runtime=rt)
    run_bound = (
        run_plain if bound is plain else call_runner(bound, policy=policy, runtime=rt)
    )

    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        run = run_plain if instance is None else run_bound
        return run(wrapped, args, kwargs)

    return _Retrying(target, wrapper, run_plain)
