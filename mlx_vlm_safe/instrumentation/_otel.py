"""OpenTelemetry: GenAI client metrics and one span per call.

Strictly private. Imported only when ``opentelemetry-api`` is installed
(``instrumentation.start`` looks first) or the ``opentelemetry-instrument``
entry point asks. It uses the providers the app configured (or the ones it
passes to :func:`enable`), through the API only: with no SDK configured,
every instrument and span is the API's no-op.

What is emitted follows the GenAI semantic conventions (development status;
the names below are the ones this version emits, and a change of version is a
change of this module, announced in the changelog):

* ``gen_ai.client.operation.duration`` (s), ``error.type`` on failure;
* ``gen_ai.client.token.usage`` ({token}), ``gen_ai.token.type`` input/output;
* ``gen_ai.client.operation.time_to_first_chunk`` and
  ``gen_ai.client.operation.time_per_output_chunk`` (s);
* one span ``generate_content`` per call, made when the call ends (its start
  and end times are the call's), with ``gen_ai.*`` attributes, retries and
  memory waits as span events, ``error.type`` and an error status on failure.

The span is made after the fact from the call's record, so nothing runs on
the generation path; its parent is whatever span is current where the call
ended (the request's span, under an instrumented web framework).
"""

from __future__ import annotations

import time
from typing import Any

from .._call_record import CallRecord

__all__ = ["OPERATION", "PROVIDER", "Telemetry"]

#: ``gen_ai.operation.name``: multimodal content generation.
OPERATION = "generate_content"
#: ``gen_ai.provider.name``.
PROVIDER = "mlx_vlm"
_DURATION_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12]
_DURATION_BUCKETS += [10.24, 20.48, 40.96, 81.92]
_TOKEN_BUCKETS = [4**i for i in range(14)]


def _version() -> str:
    """The version of mlx_vlm_safe, for the instrumentation scope."""
    from importlib import metadata

    try:
        return metadata.version("mlx-vlm-safe")
    except metadata.PackageNotFoundError:
        return "0+checkout"


class Telemetry:
    """The instruments and the tracer; :meth:`observe` is the observer."""

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        from opentelemetry import metrics, trace

        version = _version()
        self.tracer = trace.get_tracer(
            "mlx_vlm_safe", version, tracer_provider=tracer_provider
        )
        meter = metrics.get_meter(
            "mlx_vlm_safe", version, meter_provider=meter_provider
        )
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used",
            explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
        )
        self.first_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk",
            unit="s",
            description="Time to receive the first chunk",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.per_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_per_output_chunk",
            unit="s",
            description="Time per output chunk after the first",
            explicit_bucket_boundaries_advisory=[0.001 * 2**i for i in range(12)],
        )
        self._error = trace.StatusCode.ERROR

    def observe(self, record: CallRecord) -> None:
        """The observer: metric points and one span from a call's record."""
        common: dict[str, Any] = {
            "gen_ai.operation.name": OPERATION,
            "gen_ai.provider.name": PROVIDER,
        }
        failed = record.outcome != "ok"
        if failed:
            common["error.type"] = record.error_type or "_OTHER"
        self.duration.record(record.duration, common)
        if record.input_tokens is not None:
            self.tokens.record(
                record.input_tokens, {**common, "gen_ai.token.type": "input"}
            )
        if record.output_tokens is not None:
            self.tokens.record(
                record.output_tokens, {**common, "gen_ai.token.type": "output"}
            )
        if record.time_to_first_token is not None:
            self.first_chunk.record(record.time_to_first_token, common)
        speed = record.tokens_per_second
        if speed:
            self.per_chunk.record(1.0 / speed, common)
        self._span(record, common)

    def _span(self, record: CallRecord, common: dict[str, Any]) -> None:
        end = time.time_ns()
        start = end - int(record.duration * 1e9)
        attributes = {**common, **_span_attributes(record)}
        span = self.tracer.start_span(
            OPERATION, start_time=start, attributes=attributes
        )
        for name, offset, event in _events(record):
            span.add_event(name, event, timestamp=start + int(offset * 1e9))
        if record.outcome == "error":
            span.set_status(self._error, record.error_type)
        span.end(end_time=end)


def _span_attributes(record: CallRecord) -> dict[str, Any]:
    found: dict[str, Any] = {
        "gen_ai.request.model": record.model,
        "gen_ai.request.temperature": record.temperature,
        "gen_ai.request.max_tokens": record.requested_max_tokens,
        "gen_ai.usage.input_tokens": record.input_tokens,
        "gen_ai.usage.output_tokens": record.output_tokens,
        "gen_ai.response.finish_reasons": (
            (record.finish_reason,) if record.finish_reason else None
        ),
        "mlx_vlm_safe.function": record.operation,
        "mlx_vlm_safe.outcome": record.outcome,
        "mlx_vlm_safe.attempts": record.attempts,
        "mlx_vlm_safe.shortened": record.shortened,
        "mlx_vlm_safe.max_tokens": record.max_tokens,
        "mlx_vlm_safe.deadline": record.deadline,
    }
    return {k: v for k, v in found.items() if v is not None}


def _events(record: CallRecord) -> list[tuple[str, float, dict[str, Any]]]:
    """Span events: one per retry, one for the memory wait; (name, offset s, attrs).

    The retry engine's per-attempt records (``last_attempts()``, same thread,
    just settled) give each retry's time and the error that caused it; where
    they are not there (a stream counts its attempts itself) each retry is
    an event at the call's start with its number only.
    """
    events: list[tuple[str, float, dict[str, Any]]] = []
    if record.memory_wait or record.memory_refusals:
        events.append(
            (
                "mlx_vlm_safe.memory_wait",
                0.0,
                {
                    "mlx_vlm_safe.memory_wait": record.memory_wait,
                    "mlx_vlm_safe.memory_refusals": record.memory_refusals,
                },
            )
        )
    if record.attempts <= 1:
        return events
    from .._retry import last_attempts

    attempts = last_attempts()
    if len(attempts) == record.attempts:
        offset = 0.0
        previous: str | None = None
        for attempt in attempts:
            offset += attempt.waited
            if attempt.number > 1:
                detail: dict[str, Any] = {"mlx_vlm_safe.attempt": attempt.number}
                if previous:
                    detail["error.type"] = previous
                for key, value in attempt.changes.items():
                    if key == "max_tokens":  # the one change a ladder makes here
                        detail["gen_ai.request.max_tokens"] = value
                events.append(("mlx_vlm_safe.retry", offset, detail))
            offset += attempt.duration
            previous = attempt.error_type
    else:
        for number in range(2, record.attempts + 1):
            events.append(("mlx_vlm_safe.retry", 0.0, {"mlx_vlm_safe.attempt": number}))
    return events
