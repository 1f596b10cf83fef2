"""Fixtures of the telemetry tests: the records, and a real OTel SDK in memory."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import mlx_vlm_safe
from mlx_vlm_safe import instrumentation
from mlx_vlm_safe._call_record import CallRecord, subscribe
from tools.matrix import Expected

from ..conftest import Tiny
from . import _scenario

Scenario = Callable[[], list[_scenario.Expect]]


@pytest.fixture
def scenario(tiny: Tiny, mlx_vlm: Any, exports: Any, release: Expected) -> Scenario:
    """Run the five real calls of ``_scenario``; returns what each must record."""
    return lambda: _scenario.run(tiny, mlx_vlm, exports, release)


@pytest.fixture
def records() -> Iterator[list[CallRecord]]:
    """Every call record emitted during the test, in order."""
    seen: list[CallRecord] = []
    unsubscribe = subscribe(seen.append)
    yield seen
    unsubscribe()


@dataclasses.dataclass
class Otel:
    spans: Any  # InMemorySpanExporter
    reader: Any  # InMemoryMetricReader

    def points(self) -> dict[str, list[Any]]:
        """Metric name -> its data points (one per attribute set)."""
        data = self.reader.get_metrics_data()
        found: dict[str, list[Any]] = {}
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    found.setdefault(metric.name, []).extend(metric.data.data_points)
        return found


@pytest.fixture
def otel() -> Iterator[Otel]:
    """The real OTel SDK, exporting to memory, as the only OTel observer."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
        InMemorySpanExporter,
    )

    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    instrumentation.enable_otel(
        tracer_provider=tracer_provider, meter_provider=meter_provider
    )
    yield Otel(exporter, reader)
    instrumentation.disable_otel()
    meter_provider.shutdown()


@pytest.fixture
def fresh_stats() -> Iterator[None]:
    instrumentation.reset_stats()
    yield
    instrumentation.reset_stats()
    assert mlx_vlm_safe.stats().calls == 0
