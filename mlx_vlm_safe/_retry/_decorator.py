"""``@retry``: the engine around any function, method or generator function.

Built on wrapt's ``FunctionWrapper`` (descriptor binding for methods, class
and static methods done right) and on the engine's runners, so a decorated
call pays what a patched ``generate()`` pays. Kept apart from the engine
because wrapt costs tens of milliseconds to import: the patch never needs it.

``retry`` here knows nothing of its targets: the generic classification
table and no ladder (unless the policy sets one). :func:`retry_with` makes a
``retry`` that tells the engine about its targets (their failures and their
default ladder); the package's public ``retry`` is one, made by the patch
with what it knows of the library it patches.
"""

from __future__ import annotations

import dataclasses
import inspect
import textwrap
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar, overload

import wrapt

from ._classify import NO_RULES, Rules
from ._engine import Runner, call_runner
from ._failures import DEFAULT_RUNTIME
from ._ladder import CallSpec
from ._policy import Overrides, PolicyLike, RetryPolicy
from ._streams import stream_engine

__all__ = ["Retry", "retry", "retry_with"]

P = ParamSpec("P")
R = TypeVar("R")


class Retry(Protocol):
    """The type of ``retry`` and of what :func:`retry_with` makes."""

    @overload
    def __call__(self, func: Callable[P, R], /) -> Callable[P, R]: ...
    @overload
    def __call__(
        self,
        func: None = None,
        /,
        *,
        policy: RetryPolicy | None = None,
        **policy_overrides: Any,
    ) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def retry_with(
    rules: Rules, ladder: tuple[Mapping[str, int], ...], about: str = ""
) -> Retry:
    """A ``retry`` whose targets fail as ``rules`` say and shrink by ``ladder``.

    ``ladder`` applies where the policy leaves ``ladder`` at ``None``;
    ``about`` (what the rules and ladder are, in a sentence or two) ends the
    docstring of the ``retry`` made.
    """

    def retry(
        func: Callable[..., Any] | None = None,
        /,
        *,
        policy: RetryPolicy | None = None,
        **policy_overrides: Any,
    ) -> Any:
        return _retry(func, policy, policy_overrides, rules, ladder)

    if about:
        about = "\n" + textwrap.indent(textwrap.fill(about, 72), "    ") + "\n"
    retry.__doc__ = (_retry.__doc__ or "") + about
    retry.__qualname__ = "retry"  # as help() and reprs show it
    return retry


def _retry(
    func: Callable[..., Any] | None,
    policy: RetryPolicy | None,
    policy_overrides: dict[str, Any],
    rules: Rules,
    ladder: tuple[Mapping[str, int], ...],
) -> Any:
    """Retry ``func`` under a policy: ``@retry`` or ``@retry(attempts=5, ...)``.

    ``policy_overrides`` are ``RetryPolicy`` fields, checked now. Without
    ``policy`` they apply over the process-wide default at call time, so
    ``configure()`` still governs the other fields. Works on functions, methods
    and generator functions; a generator is retried only until its first item
    (after that an error propagates, so nothing is yielded twice), and one
    that ends without an item counts as empty. A plain function has no generic
    notion of "empty": raise an exception of your own and list it in
    ``retry_on`` to retry a result you judge empty.
    """
    chosen: PolicyLike = policy
    if policy_overrides and policy is not None:
        chosen = dataclasses.replace(policy, **policy_overrides)
    elif policy_overrides:
        chosen = Overrides(policy_overrides)

    def decorate(target: Callable[..., Any]) -> Any:
        return _wrap(target, chosen, rules, ladder)

    return decorate if func is None else decorate(func)


#: The engine's own ``retry``: the generic table, no ladder of its own.
retry = retry_with(NO_RULES, ())


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


def _wrap(
    target: Any,
    policy: PolicyLike,
    rules: Rules,
    ladder: tuple[Mapping[str, int], ...],
) -> Any:
    inner = (
        target.__func__ if isinstance(target, classmethod | staticmethod) else target
    )
    if inspect.iscoroutinefunction(inner) or inspect.isasyncgenfunction(inner):
        raise TypeError(f"retry() does not support async callables: {inner!r}")
    plain = CallSpec.from_callable(inner, rules=rules, ladder=ladder)
    bound = (
        plain
        if isinstance(target, staticmethod)
        else CallSpec.from_callable(inner, bound=True, rules=rules, ladder=ladder)
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
