"""Which failures are worth another attempt: small tables, read top to bottom.

Local inference is not a network call. Almost every error a model call raises
is deterministic (a bad argument, a model or template bug, a missing backend),
so a retry only multiplies latency. The only failures a second attempt can
fix are memory pressure (which may ease, or be avoided with a smaller budget)
and an empty result. Hence the default for an unknown ``Exception`` is NEVER,
and the table lists what is retried, plus the common NEVER cases so a reader
sees why they are not.

The engine knows no library: what a target's own failures look like (the
messages its allocator raises, its known defects) comes from the caller as
:class:`Rules`, on the ``CallSpec``. Order of evaluation, first match wins:

1. Not an ``Exception`` (``KeyboardInterrupt``, ``SystemExit``,
   ``GeneratorExit``): NEVER. The engine does not even catch these.
2. ``Rules.defects``: the target's known deterministic defects. They come
   before the user's additions because no retry can make them succeed:
   adding ``RuntimeError`` to ``retry_on`` must not make a defect that raises
   ``RuntimeError`` on entry retried three times.
3. The user's ``RetryPolicy.retry_on`` types and predicates: RETRY. They come
   before the tables so a user can opt in a type the tables reject (say,
   their own transient error derived from ``ValueError``).
4. ``Rules.table``, then the generic ``TABLE``.
5. Anything else: NEVER.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from ._policy import RetryPolicy

__all__ = [
    "NO_RULES",
    "TABLE",
    "DoNotRetry",
    "Explanation",
    "Rule",
    "Rules",
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
#: What any Python callable's failures mean, whatever it runs.
TABLE: tuple[Rule, ...] = (
    Rule(RETRY, (MemoryError,), (),
         "out of memory: may pass once memory frees up or the work shrinks"),
    Rule(NEVER, (ValueError, TypeError, KeyError, AttributeError), (),
         "bad argument or code defect: fails the same way again"),
    Rule(NEVER, (NameError,), (),
         "code defect (NameError, UnboundLocalError): fails the same way again"),
    Rule(NEVER, (OSError,), (), "missing or unreadable input"),
    Rule(NEVER, (ImportError,), (), "missing dependency"),
)
# fmt: on


@dataclass(frozen=True)
class Rules:
    """What a caller knows about its target's failures, for :func:`explain`.

    ``defects``: deterministic defects of the target, never retried even if
    the user's ``retry_on`` lists their type. ``table``: rows read before the
    generic :data:`TABLE` (the target's allocation failures, say). Each
    ``Rules`` value keeps its own cache of message-free verdicts by type.
    """

    defects: tuple[Rule, ...] = ()
    table: tuple[Rule, ...] = ()
    #: type -> verdict for types whose verdict does not depend on the
    #: message. It keeps the bad-argument path (a ValueError on the first
    #: attempt) to one dict lookup. Bounded: exception types are few.
    by_type: dict[type[BaseException], Explanation] = field(
        default_factory=dict, compare=False, repr=False
    )
    #: ``table`` then the generic :data:`TABLE`, joined once.
    tables: tuple[Rule, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tables", self.table + TABLE)

    def rows(self) -> tuple[Rule, ...]:
        """Every row, in the order they are read (the user's come in between)."""
        return self.defects + self.tables


#: No knowledge of the target: the generic table alone.
NO_RULES = Rules()

_NOT_EXCEPTION = "not an Exception: never caught"
_UNKNOWN = "unknown error: only known transient failures are retried"
_USER = "listed in RetryPolicy.retry_on"
_SAYS_SO = "the error says no retry can help (DoNotRetry)"


def explain(
    exc: BaseException,
    policy: RetryPolicy | None = None,
    rules: Rules = NO_RULES,
) -> Explanation:
    """Return the verdict for ``exc`` and the reason, for logs and notes.

    ``policy`` supplies the user's ``retry_on`` additions (``None``: none);
    ``rules`` what the caller knows of its target (see the module doc).
    """
    if not isinstance(exc, Exception):
        return Explanation(NEVER, _NOT_EXCEPTION)
    if isinstance(exc, DoNotRetry):
        return Explanation(NEVER, _SAYS_SO)
    user = policy.retry_on if policy is not None else ()
    cache = rules.by_type
    if not user:
        cached = cache.get(type(exc))
        if cached is not None:
            return cached
    text = _text(exc)
    for rule in rules.defects:
        if rule.matches(exc, text):
            return Explanation(rule.verdict, rule.why)
    for entry in user:
        if _user_match(entry, exc):
            return Explanation(RETRY, _USER)
    for rule in rules.tables:
        if rule.matches(exc, text):
            found = Explanation(rule.verdict, rule.why)
            break
    else:
        found = Explanation(NEVER, _UNKNOWN)
    if _message_free(exc, rules) and len(cache) < 256:
        cache[type(exc)] = found
    return found


def _text(exc: BaseException) -> str:
    try:
        return str(exc).lower()
    except Exception:  # a broken __str__ must not hide the error
        return ""


def _message_free(exc: BaseException, rules: Rules) -> bool:
    """Whether no row that looks at messages could apply to this type."""
    return not any(
        rule.message and any(_is_instance(exc, t) for t in rule.types)
        for rule in rules.rows()
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
