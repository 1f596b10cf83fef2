"""Validation and parsing of retry settings, shared by code and environment.

Every invalid setting raises ``ValueError`` naming the setting and the value,
wrong type or wrong value alike: one exception for "this configuration is
bad" is what callers, and the environment reader, catch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from ._events import RetryHook

#: A ``RetryPolicy.retry_on`` entry: an exception type, or a predicate.
RetryOn: TypeAlias = "type[Exception] | Callable[[Exception], bool]"


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def checked_attempts(name: str, value: object) -> int:
    if not (is_int(value) and value >= 1):  # type: ignore[operator]
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value  # type: ignore[return-value]


def checked_wait(name: str, value: object) -> float:
    if not (is_real(value) and value >= 0):  # type: ignore[operator]
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def checked_deadline(name: str, value: object) -> float | None:
    if value is None:
        return None
    if not (is_real(value) and value > 0):  # type: ignore[operator]
        raise ValueError(f"{name} must be a finite number > 0 or None, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def checked_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")
    return value


def checked_ladder(_: str, ladder: object) -> tuple[Mapping[str, int], ...] | None:
    if ladder is None:  # the target's own ladder (CallSpec.ladder)
        return None
    if not isinstance(ladder, tuple | list):
        raise ValueError(f"ladder must be a tuple of mappings, got {ladder!r}")
    steps: list[Mapping[str, int]] = []
    lowest: dict[str, int] = {}
    for step in ladder:
        if not isinstance(step, Mapping):
            raise ValueError(f"ladder step must be a mapping, got {step!r}")
        for key, value in step.items():
            if not (isinstance(key, str) and key.isidentifier()):
                raise ValueError(f"ladder keyword must be a name, got {key!r}")
            if not (is_int(value) and value > 0):
                raise ValueError(
                    f"ladder value must be an int > 0, got {key}={value!r}"
                )
            if value > lowest.get(key, value):
                raise ValueError(
                    f"ladder must not raise {key}: {value!r} after {lowest[key]!r}"
                )
            lowest[key] = value
        steps.append(MappingProxyType(dict(step)))
    return tuple(steps)


def checked_retry_on(_: str, retry_on: object) -> tuple[RetryOn, ...]:
    if not isinstance(retry_on, tuple | list):
        raise ValueError(f"retry_on must be a tuple, got {retry_on!r}")
    for entry in retry_on:
        if isinstance(entry, type):
            if not issubclass(entry, BaseException):
                raise ValueError(f"retry_on entry {entry!r} is not an exception")
            if not issubclass(entry, Exception):
                raise ValueError(
                    f"retry_on entry {entry!r} is a BaseException that is not an "
                    "Exception: it is never caught, so it is never retried"
                )
        elif not callable(entry):
            raise ValueError(f"retry_on entry {entry!r} is neither a type nor callable")
    return tuple(retry_on)


def checked_hooks(_: str, hooks: object) -> tuple[RetryHook, ...]:
    if not isinstance(hooks, tuple | list):
        raise ValueError(f"hooks must be a tuple, got {hooks!r}")
    for hook in hooks:
        for method in ("on_retry", "on_give_up"):
            if not callable(getattr(hook, method, None)):
                raise ValueError(f"hook {hook!r} has no callable {method}()")
    return tuple(hooks)


# --- environment values --------------------------------------------------


def parse_int(raw: str) -> int:
    return int(raw.strip())


def parse_float(raw: str) -> float:
    return float(raw.strip())


def parse_deadline(raw: str) -> float | None:
    return None if raw.strip().lower() == "none" else float(raw.strip())


def parse_ladder(raw: str) -> tuple[Mapping[str, int], ...]:
    """Parse ``budget=512;budget=256,chunk=128`` (``;`` between steps)."""
    if not raw.strip():
        return ()
    steps: list[Mapping[str, int]] = []
    for text in raw.split(";"):
        step: dict[str, int] = {}
        for item in text.split(","):
            key, sep, value = (part.strip() for part in item.partition("="))
            if not sep or not key.isidentifier() or key in step:
                raise ValueError(f"expected distinct keyword=int items, got {item!r}")
            step[key] = int(value)
        steps.append(step)
    return tuple(steps)
