"""Retry what can succeed on retry, with less work: the call path of the engine.

``call_with_retry`` (and ``stream_with_retry`` in ``_streams``) know no
library: the caller describes its target with a ``CallSpec``; ``@retry``
(``_decorator``) derives the spec from a signature. Rules, each answering a
known complaint about retry wrappers:

* Only ``Exception`` is caught; ``KeyboardInterrupt``, ``SystemExit`` and
  ``GeneratorExit`` pass through untouched, during attempts and waits alike.
* The caller gets its own exception object back (``except ValueError:`` keeps
  working) carrying the history; never a wrapper type, never ``None``.
* The happy path (``call_runner``) is one ``ContextVar`` read, one set, two
  clock reads and the call; everything else lives in ``_failures`` and runs
  only after a failure.
* Nested loops collapse: while a loop runs an attempt, retry-managed calls
  inside it run once (retries at several layers multiply attempts).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ._context import STATE, CallState, interrupted
from ._failures import (
    DEFAULT_RUNTIME,
    RetryLoop,
    Runtime,
    predicate_failed,
    settled_at_once,
    tokens_read,
)
from ._ladder import CallSpec
from ._policy import PolicyLike, RetryPolicy

__all__ = ["Runner", "call_runner", "call_with_retry"]

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
    no helper frames. Everything else is in ``_failures``, built only after a
    failure. ``@retry`` and the patched ``generate()`` both run on it.
    """
    rt = DEFAULT_RUNTIME if runtime is None else runtime
    clock = rt.clock
    predicate, progress, rules = spec.is_empty, spec.progress, spec.rules
    get_state, set_state, new = _get_state, _set_state, CallState

    def run(fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        previous = get_state()
        if previous.active:  # inside another loop's attempt, or disabled
            return fn(*args, **kwargs)
        state = new()
        state.active = True
        set_state(state)
        state.started = clock()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            if settled_at_once(exc, policy, state, clock, rules):
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
