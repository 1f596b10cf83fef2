"""The degradation ladder: which keyword values each retry uses.

A retry after an out-of-memory error should do less work, but never more than
the caller asked for, and never pass a keyword the target does not accept (a
library's keywords change from release to release). ``CallSpec`` is what the
engine knows about its target to honour both rules, and what its caller tells
it about the target's failures (``rules``) and default ``ladder``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ._classify import NO_RULES, Rules
from ._events import NO_CHANGES

_NO_POSITIONS: Mapping[str, int] = MappingProxyType({})

__all__ = ["CallSpec", "apply_changes", "ladder_changes", "ladder_for"]

_POSITIONAL = (
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
)
_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


@dataclass(frozen=True, slots=True)
class CallSpec:
    """What the engine may know about the callable it retries.

    ``accepted_kwargs``: keywords the target accepts; a ladder keyword outside
    it is never injected. ``None`` means unknown: then only keywords the caller
    passed, or listed in ``defaults``, are changed. ``defaults``: the target's
    defaults for laddered keywords, so a step never exceeds them.
    ``positions``: the index of each parameter that can be passed by position,
    so a value passed that way is read, and replaced, in place. ``is_empty``:
    result predicate for an empty generation. ``progress``: reads how many
    tokens the last attempt produced. ``rules``: the target's own failures
    (see ``_classify``). ``ladder``: the target's default ladder, used when
    the policy's ``ladder`` is ``None`` (the engine has none of its own: only
    the caller knows which keyword makes its target do less work).
    """

    name: str
    accepted_kwargs: frozenset[str] | None = None
    defaults: Mapping[str, object] = field(default_factory=lambda: NO_CHANGES)
    is_empty: Callable[[Any], bool] | None = None
    progress: Callable[[], int | None] | None = None
    positions: Mapping[str, int] = field(default_factory=lambda: _NO_POSITIONS)
    rules: Rules = NO_RULES
    ladder: tuple[Mapping[str, int], ...] = ()

    @classmethod
    def from_callable(
        cls,
        func: Callable[..., object],
        *,
        name: str | None = None,
        bound: bool = False,
        rules: Rules = NO_RULES,
        ladder: tuple[Mapping[str, int], ...] = (),
    ) -> CallSpec:
        """Derive a spec from ``func``'s signature (``bound``: drop ``self``).

        With ``**kwargs`` in the signature the accepted set is unknown (``None``),
        so only keywords the caller passed or that have a default are changed.
        """
        if name is None:
            module = getattr(func, "__module__", None) or "?"
            name = f"{module}.{getattr(func, '__qualname__', repr(func))}"
        try:
            params = list(inspect.signature(func).parameters.values())
        except (TypeError, ValueError):  # no signature: change nothing unasked
            return cls(name, rules=rules, ladder=ladder)
        if bound and params and params[0].kind in _POSITIONAL:
            params = params[1:]
        positional = [p.name for p in params if p.kind in _POSITIONAL]
        accepted = frozenset(p.name for p in params if p.kind in _KEYWORD)
        open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        defaults = {p.name: p.default for p in params if p.default is not p.empty}
        return cls(
            name,
            None if open_ended else accepted,
            MappingProxyType(defaults),
            positions=MappingProxyType({n: i for i, n in enumerate(positional)}),
            rules=rules,
            ladder=ladder,
        )


def ladder_for(
    policy_ladder: tuple[Mapping[str, int], ...] | None, spec: CallSpec
) -> tuple[Mapping[str, int], ...]:
    """The policy's ladder if it sets one, else the target's own (``spec``)."""
    return spec.ladder if policy_ladder is None else policy_ladder


def ladder_changes(
    ladder: tuple[Mapping[str, int], ...],
    attempt: int,
    spec: CallSpec,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
) -> Mapping[str, object]:
    """Keyword values for ``attempt``, relative to the call as written.

    Steps ``ladder[0]`` to ``ladder[attempt - 2]`` accumulate, each value being
    ``min(value in effect, step)``: a caller's budget is never raised, and a
    keyword neither passed nor known to be accepted is never injected. ``None``
    means unbounded, so the step value applies. Attempt 1 changes nothing.
    """
    if attempt <= 1 or not ladder:
        return NO_CHANGES
    effective: dict[str, object] = {}
    changes: dict[str, object] = {}
    for step in ladder[: attempt - 1]:
        for key, cap in step.items():
            if key in effective:
                current = effective[key]
            else:
                passed, current = _caller_value(key, spec, args, kwargs)
                known = spec.accepted_kwargs
                if not passed and key not in (
                    spec.defaults if known is None else known
                ):
                    continue
            if current is None:
                new: object = cap
            elif isinstance(current, int | float) and not isinstance(current, bool):
                new = min(current, cap)
            else:
                continue  # not a budget we understand: leave it alone
            effective[key] = new
            if new != current or key in changes:
                changes[key] = new
    return MappingProxyType(changes) if changes else NO_CHANGES


def _caller_value(
    key: str, spec: CallSpec, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> tuple[bool, object]:
    """Return ``(passed, value)``: the caller's value if passed, else the default."""
    position = spec.positions.get(key)
    if position is not None and position < len(args):
        return True, args[position]
    if key in kwargs:
        return True, kwargs[key]
    return False, spec.defaults.get(key)


def apply_changes(
    spec: CallSpec,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    changes: Mapping[str, object],
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Return ``(args, kwargs)`` with ``changes`` put where the caller put them."""
    new_args, new_kwargs = list(args), dict(kwargs)
    for key, value in changes.items():
        position = spec.positions.get(key)
        if position is not None and position < len(args):
            new_args[position] = value
        else:
            new_kwargs[key] = value
    return tuple(new_args), new_kwargs
