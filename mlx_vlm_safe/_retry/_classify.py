"""Which failures are worth another attempt: one small table, read top to bottom.

Local inference is not a network call. Almost every error mlx-vlm raises is
deterministic (a bad argument, a model or template bug, a missing backend), so a
retry only multiplies latency. The only failures a second attempt can fix are
memory pressure (which may ease, or be avoided with a smaller budget) and an
empty generation. Hence the default for an unknown ``Exception`` is NEVER, and
the table lists what is retried, plus the common NEVER cases so a reader sees
why they are not.

Order of evaluation, first match wins:

1. Not an ``Exception`` (``KeyboardInterrupt``, ``SystemExit``,
   ``GeneratorExit``): NEVER. The engine does not even catch these.
2. ``DEFECTS``: known deterministic release defects. They come before the
   user's additions because no retry can make them succeed: adding
   ``RuntimeError`` to ``retry_on`` must not make a missing Metal device
   retried three times.
3. The user's ``RetryPolicy.retry_on`` types and predicates: RETRY. They come
   before the built-in table so a user can opt in a type the table rejects
   (say, their own transient error derived from ``ValueError``).
4. ``TABLE``.
5. Anything else: NEVER.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from ._policy import RetryPolicy

__all__ = [
    "DEFECTS",
    "TABLE",
    "DoNotRetry",
    "Explanation",
    "Rule",
    "Verdict",
    "explain",
]

_log = logging.getLogger("mlx_vlm_safe")


class Verdict(enum.Enum):
    """What the retry loop does with a failure."""

    RETRY = "retry"
    NEVER = "never"


class Explanation(NamedTuple):
    """A verdict and the reason for it, as logs and exception notes show it."""

    verdict: Verdict
    why: str


class DoNotRetry:
    """A mixin for exceptions that say, themselves, that no retry can help.

    The caller's code still catches them by their real type (a
    ``class Refused(MemoryError, DoNotRetry)`` is a ``MemoryError``); the
    table is never asked. For errors whose type alone would be retried but
    whose raiser knows better (memory that did not free up in time).
    """

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of the table.

    ``types`` holds exception classes, or ``"package:ClassName"`` strings for
    classes matched by name so that their package (PIL) is never imported just
    to classify an error. ``message`` holds lower-case substrings, any of which
    must occur in ``str(exc).lower()``; empty means any message.
    """

    verdict: Verdict
    types: tuple[type[BaseException] | str, ...]
    message: tuple[str, ...]
    why: str

    def matches(self, exc: BaseException, text: str) -> bool:
        """Whether ``exc`` (with lower-cased message ``text``) fits this row."""
        if not any(_is_instance(exc, t) for t in self.types):
            return False
        return not self.message or any(m in text for m in self.message)


def _is_instance(exc: BaseException, t: type[BaseException] | str) -> bool:
    if not isinstance(t, str):
        return isinstance(exc, t)
    package, _, name = t.partition(":")
    return any(
        c.__name__ == name and c.__module__.partition(".")[0] == package
        for c in type(exc).__mro__
    )


RETRY, NEVER = Verdict.RETRY, Verdict.NEVER

# fmt: off
DEFECTS: tuple[Rule, ...] = (
    Rule(NEVER, (KeyError,), ("max_recommended_working_set_size",),
         "mlx-vlm 0.1.22-0.3.1 on a non-Metal backend fails on entry"),
    Rule(NEVER, (RuntimeError,), ("[metal::device_info]",),
         "mlx-vlm 0.1.22-0.3.1 on a non-Metal backend fails on entry"),
)

TABLE: tuple[Rule, ...] = (
    Rule(RETRY, (MemoryError,), (),
         "out of memory: may pass once memory frees up or the work shrinks"),
    Rule(RETRY, (RuntimeError,),
         ("[metal::malloc]", "attempting to allocate", "out of memory",
          "[cuda::malloc]", "cudamalloc", "std::bad_alloc"),
         "mlx or CUDA allocation failure raised as RuntimeError"),
    Rule(RETRY, (AttributeError,),
         ("'nonetype' object has no attribute 'token'",
          "'nonetype' object has no attribute 'prompt_tokens'"),
         "empty generation on an unpatched mlx-vlm path (0.1.26-0.5.0)"),
    Rule(NEVER, (ValueError, TypeError, KeyError, AttributeError), (),
         "bad argument or code defect: fails the same way again"),
    Rule(NEVER, (NameError,), (),
         "code defect (mlx-vlm's max_tokens=0 UnboundLocalError)"),
    Rule(NEVER, (OSError, "PIL:UnidentifiedImageError"), (),
         "missing or unreadable input"),
    Rule(NEVER, (ImportError,), (), "missing dependency"),
)
# fmt: on

_NOT_EXCEPTION = "not an Exception: never caught"
_UNKNOWN = "unknown error: only known transient failures are retried"
_USER = "listed in RetryPolicy.retry_on"
_SAYS_SO = "the error says no retry can help (DoNotRetry)"

# type -> (verdict, why) for types whose verdict does not depend on the message
# under the built-in rows. It keeps the bad-argument path (a ValueError on the
# first attempt) to one dict lookup. Bounded: exception types are few.
_by_type: dict[type[BaseException], Explanation] = {}


def explain(exc: BaseException, policy: RetryPolicy | None = None) -> Explanation:
    """Return the verdict for ``exc`` and the reason, for logs and notes.

    ``policy`` supplies the user's ``retry_on`` additions; ``None`` means the
    built-in table only.
    """
    if not isinstance(exc, Exception):
        return Explanation(NEVER, _NOT_EXCEPTION)
    if isinstance(exc, DoNotRetry):
        return Explanation(NEVER, _SAYS_SO)
    user = policy.retry_on if policy is not None else ()
    if not user:
        cached = _by_type.get(type(exc))
        if cached is not None:
            return cached
    text = _text(exc)
    for rule in DEFECTS:
        if rule.matches(exc, text):
            return Explanation(rule.verdict, rule.why)
    for entry in user:
        if _user_match(entry, exc):
            return Explanation(RETRY, _USER)
    for rule in TABLE:
        if rule.matches(exc, text):
            found = Explanation(rule.verdict, rule.why)
            break
    else:
        found = Explanation(NEVER, _UNKNOWN)
    if _message_free(exc) and len(_by_type) < 256:
        _by_type[type(exc)] = found
    return found


def _text(exc: BaseException) -> str:
    try:
        return str(exc).lower()
    except Exception:  # a broken __str__ must not hide the error
        return ""


def _message_free(exc: BaseException) -> bool:
    """Whether no row that looks at messages could apply to this type."""
    return not any(
        rule.message and any(_is_instance(exc, t) for t in rule.types)
        for rule in DEFECTS + TABLE
    )


def _user_match(entry: object, exc: Exception) -> bool:
    if isinstance(entry, type):
        return isinstance(exc, entry)
    try:
        return bool(entry(exc))  # type: ignore[operator]
    except Exception:  # a broken predicate must not break the call
        _log.warning(
            "retry_on predicate %r raised; treating it as no match",
            entry,
            exc_info=True,
        )
        return False
