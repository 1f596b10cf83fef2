"""What the retry engine tells the outside world: records, hooks and logs.

Kept apart from the engine so the loop in ``_failures`` reads as a loop. Nothing
here ever sees call arguments other than the laddered keywords, so prompts and
images cannot leak into logs, notes or metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple, Protocol

from .._log import log

__all__ = ["NO_CHANGES", "AttemptRecord", "RetryDetails", "RetryHook", "retry_log"]

retry_log = log.getChild("retry")


NO_CHANGES: Mapping[str, object] = MappingProxyType({})


class AttemptRecord(NamedTuple):
    """One attempt of a retry-managed call.

    ``changes`` are the keyword values changed from the call as written (empty
    on attempt 1), ``error_type`` the exception's class name (``None`` for a
    result), ``tokens`` what the attempt produced when known, ``waited`` the
    pause taken before it. A NamedTuple because it is immutable and cheap to
    build on the error path, where the engine builds one per attempt.
    """

    number: int
    changes: Mapping[str, object]
    error_type: str | None
    duration: float
    tokens: int | None
    waited: float

    def describe(self, limit: int) -> str:
        """One human line, used for the exception note."""
        outcome = f"raised {self.error_type}" if self.error_type else "returned"
        where = f"attempt {self.number}/{limit}"
        if self.changes:
            where += " with " + ", ".join(f"{k}={v!r}" for k, v in self.changes.items())
        waited = f" after waiting {self.waited:.2f} s" if self.waited else ""
        return f"mlx_vlm_safe: {where}{waited} {outcome} in {self.duration:.3f} s"


@dataclass(frozen=True, slots=True)
class RetryDetails:
    """What a hook learns about one retry or give-up.

    ``attempt`` is the attempt that just ended; ``exception`` is its error, or
    ``None`` for an empty result; ``wait`` and ``changes`` describe the next
    attempt (0 and empty on give-up); ``elapsed`` counts from the start of
    attempt 1. ``reason`` is ``"retry"`` for ``on_retry``, and for
    ``on_give_up`` one of ``"attempts"``, ``"deadline"`` (the policy's retry
    budget), ``"timeout"`` (the call's own time limit, ``Runtime.time_left``),
    ``"not-retryable"``.
    """

    name: str
    attempt: int
    exception: Exception | None
    wait: float
    changes: Mapping[str, object]
    elapsed: float
    reason: str


class RetryHook(Protocol):
    """Observer of retries, e.g. to count them in a service's own metrics.

    ``on_retry`` runs before each wait; ``on_give_up`` when a call that was
    retried, or whose failure was retryable, ends without success. A first
    attempt that fails with a non-retryable error is the caller's own error,
    not a retry event: no hook runs. A hook that raises an ``Exception`` is
    logged and ignored; it never changes the call's outcome. After
    ``on_retry`` returns, the failed attempt's exception loses its traceback
    (to free that attempt's memory): format it inside the hook if needed.
    """

    def on_retry(self, details: RetryDetails) -> None:
        """Observe a retry, before the wait that precedes the next attempt."""

    def on_give_up(self, details: RetryDetails) -> None:
        """Observe the end of retrying, once, when the call did not succeed."""


def notify(hooks: Sequence[RetryHook], method: str, details: RetryDetails) -> None:
    """Run ``method`` of every hook; a failing hook must not fail the call."""
    for hook in hooks:
        try:
            getattr(hook, method)(details)
        except Exception:  # observers never change the outcome
            retry_log.warning(
                "retry hook %r.%s raised; ignored", hook, method, exc_info=True
            )


def log_event(level: int, event: str, details: RetryDetails, message: str) -> None:
    """Log one retry event with structured ``extra`` fields for log pipelines."""
    if not retry_log.isEnabledFor(level):
        return
    error_type = type(details.exception).__name__ if details.exception else None
    retry_log.log(
        level,
        message,
        extra={
            "mlx_vlm_safe_event": event,
            "mlx_vlm_safe_callable": details.name,
            "mlx_vlm_safe_attempt": details.attempt,
            "mlx_vlm_safe_error_type": error_type,
            "mlx_vlm_safe_wait": details.wait,
            "mlx_vlm_safe_changes": dict(details.changes),
            "mlx_vlm_safe_elapsed": details.elapsed,
            "mlx_vlm_safe_reason": details.reason,
        },
    )
