"""The generic retry engine: retry what can succeed on retry, with less work.

Strictly private; the package re-exports the public names. It knows no
library: a caller describes its target with a ``CallSpec`` (which keywords a
retry may lower and its default ladder, what counts as an empty result, and
``Rules``: what the target's own failures look like).

* ``_policy``: ``RetryPolicy``, the process-wide default, the testing switch;
  ``_settings`` validates and parses their values.
* ``_classify``: which failures are worth another attempt (a generic table,
  and the caller's ``Rules``).
* ``_ladder``: the keyword values each retry uses.
* ``_engine`` (calls) and ``_streams`` (streams): the happy path;
  ``_failures``: everything after an attempt that did not succeed.
* ``_context``: per-call state in a ``ContextVar`` (nesting, opt-out, records).
* ``_events``: attempt records, hooks and log lines.
* ``_decorator``: ``@retry`` and ``retry_with(rules, ladder)``, imported on
  first use (it needs wrapt, which costs tens of milliseconds to import; the
  patch never needs it).
"""

from __future__ import annotations

from ._classify import NO_RULES, DoNotRetry, Rule, Rules, Verdict, explain
from ._context import (
    STATE,
    CallState,
    last_attempts,
    retries_disabled,
)
from ._engine import call_runner, call_with_retry
from ._events import AttemptRecord, RetryDetails, RetryHook
from ._failures import Runtime
from ._ladder import CallSpec
from ._policy import (
    RETRY_SETTINGS,
    RetryOn,
    RetryPolicy,
    configure,
    get_policy,
    is_testing,
    policy_from_env,
    reset_config,
    set_testing,
)
from ._streams import stream_with_retry

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._decorator import Retry as Retry
    from ._decorator import retry as retry
    from ._decorator import retry_with as retry_with

__all__ = [
    "NO_RULES",
    "RETRY_SETTINGS",
    "STATE",
    "AttemptRecord",
    "CallSpec",
    "CallState",
    "DoNotRetry",
    "Retry",
    "RetryDetails",
    "RetryHook",
    "RetryOn",
    "RetryPolicy",
    "Rule",
    "Rules",
    "Runtime",
    "Verdict",
    "call_runner",
    "call_with_retry",
    "configure",
    "explain",
    "get_policy",
    "is_testing",
    "last_attempts",
    "policy_from_env",
    "reset_config",
    "retries_disabled",
    "retry",
    "retry_with",
    "set_testing",
    "stream_with_retry",
]


#: Names from ``_decorator``, loaded on first use (it imports wrapt).
_DECORATOR = ("Retry", "retry", "retry_with")


def __getattr__(name: str) -> Any:
    if name not in _DECORATOR:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import _decorator

    value = getattr(_decorator, name)
    globals()[name] = value
    return value
