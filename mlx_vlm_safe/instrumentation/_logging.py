"""One WARNING per failed or shortened call, on ``mlx_vlm_safe.calls``.

Strictly private. The line and its ``extra`` fields come from the
:class:`~mlx_vlm_safe._call_record.CallRecord`, so they hold counts, times
and class names only: never the prompt, the images, the output text or the
exception's message (a message can quote the input).

Who sees it. The package logger has a ``NullHandler`` (a library must not
print what the app did not ask for), so a record reaches the app's handlers
by propagating to the root logger, where ``logging.basicConfig()``,
``dictConfig`` or structlog's stdlib integration put them. Under uvicorn the
root logger has no handler (uvicorn configures only its own loggers), and the
one trace of a failed or shortened answer used to vanish. So this logger has
one handler of its own, :class:`_WhenUnhandled`: it writes the line to stderr
only when the root logger has no handler at all, i.e. exactly when nobody
else would show it. Configure the root logger, and it stays quiet; silence
the lines with ``logging.getLogger("mlx_vlm_safe.calls").setLevel("ERROR")``.
"""

from __future__ import annotations

import logging
import sys

from .._call_record import CallRecord

__all__ = ["LOGGER", "fields", "observe"]

LOGGER = logging.getLogger("mlx_vlm_safe.calls")


class _WhenUnhandled(logging.Handler):
    """Write to stderr, but only if the root logger has no handler."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.setFormatter(logging.Formatter("%(levelname)s:%(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers:
            return  # the record propagates to them
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


if not any(isinstance(h, _WhenUnhandled) for h in LOGGER.handlers):
    LOGGER.addHandler(_WhenUnhandled())


def fields(record: CallRecord) -> dict[str, object]:
    """The structured ``extra`` fields of a call's log record.

    Plain names (structlog and JSON formatters show them as they are); none
    clashes with a ``LogRecord`` attribute.
    """
    return {
        "operation": record.operation,
        "outcome": record.outcome,
        "error_type": record.error_type,
        "attempts": record.attempts,
        "shortened": record.shortened,
        "duration_s": round(record.duration, 6),
        "time_to_first_token_s": record.time_to_first_token,
        "input_tokens": record.input_tokens,
        "output_tokens": record.output_tokens,
        "finish_reason": record.finish_reason,
        "requested_max_tokens": record.requested_max_tokens,
        "max_tokens": record.max_tokens,
        "memory_wait_s": round(record.memory_wait, 6),
        "memory_refusals": record.memory_refusals,
    }


def observe(record: CallRecord) -> None:
    """The observer: a WARNING for a failed or shortened call, else nothing."""
    if record.outcome == "error":
        LOGGER.warning(
            "%s failed: %s after %d attempt(s) in %.3f s",
            record.operation,
            record.error_type,
            record.attempts,
            record.duration,
            extra=fields(record),
        )
    elif record.shortened:
        LOGGER.warning(
            "%s answer shortened: %s of %s tokens requested (max_tokens lowered "
            "to %s by the retry ladder after %d attempt(s))",
            record.operation,
            record.output_tokens,
            record.requested_max_tokens,
            record.max_tokens,
            record.attempts,
            extra=fields(record),
        )
