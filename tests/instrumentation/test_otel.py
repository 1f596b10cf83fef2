"""OpenTelemetry: the GenAI metric points and spans of real calls, exactly.

The real SDK with its in-memory reader and exporter; the five calls of
``_scenario``. What each point and span must hold is written from the
scenario; only the prompt's token count is read from the call's record
(the release's tokenizer counts it, and 0.1.x-0.2.x do not say).
"""

from __future__ import annotations

from typing import Any

import pytest

from mlx_vlm_safe._call_record import CallRecord

from . import _scenario
from .conftest import Otel, Scenario

pytestmark = pytest.mark.model

BASE = {"gen_ai.operation.name": "generate_content", "gen_ai.provider.name": "mlx_vlm"}


def _metric_attrs(e: _scenario.Expect) -> dict[str, Any]:
    return BASE if e.error_type is None else {**BASE, "error.type": e.error_type}


def _key(attributes: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(dict(attributes).items()))


def test_metric_points_are_exactly_the_calls(
    scenario: Scenario,
    otel: Otel,
    records: list[CallRecord],
) -> None:
    expected = scenario()
    points = otel.points()

    durations: dict[Any, int] = {}
    for e in expected:
        key = _key(_metric_attrs(e))
        durations[key] = durations.get(key, 0) + 1
    got = {
        _key(p.attributes): p.count for p in points["gen_ai.client.operation.duration"]
    }
    assert got == durations

    outputs: dict[Any, list[int]] = {}
    inputs: dict[Any, list[int]] = {}
    for e, record in zip(expected, records, strict=True):
        attrs = _metric_attrs(e)
        if e.output_tokens is not None:
            key = _key({**attrs, "gen_ai.token.type": "output"})
            outputs.setdefault(key, []).append(e.output_tokens)
        if record.input_tokens is not None:
            key = _key({**attrs, "gen_ai.token.type": "input"})
            inputs.setdefault(key, []).append(record.input_tokens)
    got_tokens = {
        _key(p.attributes): (p.count, p.sum)
        for p in points["gen_ai.client.token.usage"]
    }
    want_tokens = {k: (len(v), sum(v)) for k, v in {**outputs, **inputs}.items()}
    assert got_tokens == want_tokens

    # A first chunk: every call that produced an item (not the failed ones).
    first = {
        _key(p.attributes): p.count
        for p in points["gen_ai.client.operation.time_to_first_chunk"]
    }
    reached = [e for e in expected if e.outcome != "error"]
    want_first: dict[Any, int] = {}
    for e in reached:
        want_first[_key(_metric_attrs(e))] = (
            want_first.get(_key(_metric_attrs(e)), 0) + 1
        )
    assert first == want_first


def test_one_span_per_call_with_its_attributes_and_events(
    scenario: Scenario,
    otel: Otel,
    records: list[CallRecord],
) -> None:
    from opentelemetry.trace import StatusCode

    expected = scenario()
    spans = otel.spans.get_finished_spans()
    assert [s.name for s in spans] == ["generate_content"] * len(expected)
    for e, span, record in zip(expected, spans, records, strict=True):
        want: dict[str, Any] = {
            **_metric_attrs(e),
            "gen_ai.request.max_tokens": e.requested,
            "mlx_vlm_safe.function": e.function,
            "mlx_vlm_safe.outcome": e.outcome,
            "mlx_vlm_safe.attempts": e.attempts,
            "mlx_vlm_safe.shortened": e.shortened,
        }
        if record.input_tokens is not None:
            want["gen_ai.usage.input_tokens"] = record.input_tokens
        if e.output_tokens is not None:
            want["gen_ai.usage.output_tokens"] = e.output_tokens
        if e.finish_reason is not None:
            want["gen_ai.response.finish_reasons"] = (e.finish_reason,)
        want["mlx_vlm_safe.max_tokens"] = e.served
        want["gen_ai.request.model"] = "paligemma"  # the tiny model's type
        if record.temperature is not None:
            want["gen_ai.request.temperature"] = record.temperature
        assert dict(span.attributes) == want, e.name
        status = StatusCode.ERROR if e.outcome == "error" else StatusCode.UNSET
        assert span.status.status_code == status, e.name
        retries = [
            dict(event.attributes)
            for event in span.events
            if event.name == "mlx_vlm_safe.retry"
        ]
        assert [event.name for event in span.events] == ["mlx_vlm_safe.retry"] * (
            e.attempts - 1
        ), e.name
        assert retries == [
            {
                "mlx_vlm_safe.attempt": number,
                "error.type": "MemoryError",
                "gen_ai.request.max_tokens": 4,
            }
            for number in range(2, e.attempts + 1)
        ], e.name
        assert span.end_time - span.start_time == pytest.approx(
            record.duration * 1e9, abs=1e6
        )
