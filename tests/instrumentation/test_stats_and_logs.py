"""``mlx_vlm_safe.stats()`` and the WARNING lines, after the five real calls."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import mlx_vlm_safe

from ..conftest import Tiny
from .conftest import Scenario

pytestmark = pytest.mark.model


@pytest.mark.usefixtures("fresh_stats")
def test_stats_count_every_call_by_outcome_and_error_type(
    scenario: Scenario,
) -> None:
    expected = scenario()
    stats = mlx_vlm_safe.stats()
    assert isinstance(stats, mlx_vlm_safe.Stats)
    assert stats.calls == len(expected) == 5
    assert stats.outcomes == {"ok": 2, "error": 2, "cancelled": 1}
    errors = [e.error_type for e in expected if e.outcome == "error"]
    assert stats.errors == {t: errors.count(t) for t in errors}
    assert stats.shortened == sum(e.shortened for e in expected)
    assert stats.retries == sum(e.attempts - 1 for e in expected)
    assert stats.output_tokens == sum(
        e.output_tokens or 0 for e in expected if e.outcome == "ok"
    )
    assert stats.error_rate == 2 / 5
    assert stats.duration.samples == 5
    # A first token: the two answers and the stream; not the two failures.
    assert stats.time_to_first_token.samples == 3
    assert stats.in_flight == 0
    p = stats.duration
    assert p.p50 is not None
    assert p.p90 is not None
    assert p.p99 is not None
    assert 0 < p.p50 <= p.p90 <= p.p99


def test_one_warning_per_failed_or_shortened_call_with_fields(
    scenario: Scenario,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="mlx_vlm_safe.calls"):
        expected = scenario()
    lines = [r for r in caplog.records if r.name == "mlx_vlm_safe.calls"]
    loud = [e for e in expected if e.outcome == "error" or e.shortened]
    assert len(lines) == len(loud)
    for e, line in zip(loud, lines, strict=True):
        assert line.levelno == logging.WARNING
        fields = {k: getattr(line, k) for k in ("operation", "outcome", "error_type")}
        assert fields == {
            "operation": e.function,
            "outcome": e.outcome,
            "error_type": e.error_type,
        }
        assert (line.attempts, line.shortened) == (e.attempts, e.shortened)
        assert line.output_tokens == e.output_tokens
        assert line.requested_max_tokens == 8
        assert line.max_tokens == e.served
        if e.outcome == "error":
            assert f"failed: {e.error_type} after {e.attempts} attempt" in line.message
        else:
            assert f"shortened: {e.output_tokens} of 8 tokens" in line.message


@pytest.mark.usefixtures("fresh_stats")
def test_a_stream_is_in_flight_until_it_ends(tiny: Tiny, exports: Any) -> None:
    assert mlx_vlm_safe.stats().in_flight == 0
    stream = tiny.stream(exports.stream_generate)
    next(stream)
    assert mlx_vlm_safe.stats().in_flight == 1
    assert mlx_vlm_safe.stats().calls == 0
    for _ in stream:
        pass
    assert mlx_vlm_safe.stats().in_flight == 0
    assert mlx_vlm_safe.stats().outcomes["ok"] == 1
