"""Prometheus metrics, served at ``http://ADDR:PORT/metrics``.

Strictly private. Imported only when ``MLX_VLM_SAFE_METRICS_PORT`` is set
(``mlx-vlm-safe run --metrics-port P`` sets it), and then needs
``prometheus-client`` (the ``prometheus`` extra). Names follow Prometheus'
conventions: a ``mlx_vlm_safe_`` prefix, base units (seconds), ``_total`` on
counters.

Several worker processes (uvicorn ``--workers N``, gunicorn): each worker
patches and tries to bind the port; the first one gets it and the others
warn. Without ``PROMETHEUS_MULTIPROC_DIR`` the one that got it serves its own
calls only. With it (an empty folder, set before the workers start,
emptied at each deploy), every worker writes its metrics there and the one
serving ``/metrics`` reads all of them: prometheus-client's multiprocess
mode. The two gauges then add up the workers' live values.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Literal

from .._call_record import CallRecord
from . import _gauges

__all__ = ["Metrics", "serve"]

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
FIRST_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
MULTIPROC = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    """The instruments, and the observer that updates them from a record."""

    def __init__(self, registry: Any = None) -> None:
        from prometheus_client import REGISTRY, Counter, Gauge, Histogram

        reg = REGISTRY if registry is None else registry
        self.multiprocess = bool(os.environ.get(MULTIPROC))

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
            return Counter(name, doc, labels, registry=reg)

        self.generations = counter(
            "mlx_vlm_safe_generations",
            "Patched generate()/stream_generate() calls, after retries.",
            ("outcome", "error_type"),
        )
        self.duration = Histogram(
            "mlx_vlm_safe_generation_duration_seconds",
            "Seconds per call, retries and memory waits included.",
            ("outcome",),
            buckets=DURATION_BUCKETS,
            registry=reg,
        )
        self.first_token = Histogram(
            "mlx_vlm_safe_time_to_first_token_seconds",
            "Seconds from the call to its first token.",
            buckets=FIRST_TOKEN_BUCKETS,
            registry=reg,
        )
        self.input_tokens = counter(
            "mlx_vlm_safe_input_tokens", "Prompt tokens, where the release counts them."
        )
        self.output_tokens = counter(
            "mlx_vlm_safe_output_tokens", "Tokens of the answers callers got."
        )
        self.retries = counter("mlx_vlm_safe_retries", "Attempts beyond the first.")
        self.shortened = counter(
            "mlx_vlm_safe_shortened_answers",
            "Answers shortened by a retry ladder step (lower max_tokens).",
        )
        self.memory_refusals = counter(
            "mlx_vlm_safe_memory_refusals", "Attempts the memory guard refused."
        )
        self.memory_wait = counter(
            "mlx_vlm_safe_memory_wait_seconds", "Seconds calls waited for memory."
        )
        # Across processes the live values add up (a callback cannot).
        mode: Literal["livesum", "all"] = "livesum" if self.multiprocess else "all"
        self.in_flight = Gauge(
            "mlx_vlm_safe_calls_in_flight",
            "Patched calls running now.",
            registry=reg,
            multiprocess_mode=mode,
        )
        self.waiting = Gauge(
            "mlx_vlm_safe_calls_waiting_for_memory",
            "Patched calls waiting for memory now.",
            registry=reg,
            multiprocess_mode=mode,
        )
        if not self.multiprocess:  # read at scrape time
            self.in_flight.set_function(_gauges.in_flight)
            self.waiting.set_function(_gauges.waiting)

    def observe(self, record: CallRecord) -> None:
        """The observer: one call's record into the counters and histograms."""
        error_type = "" if record.outcome == "ok" else record.error_type or ""
        self.generations.labels(record.outcome, error_type).inc()
        self.duration.labels(record.outcome).observe(record.duration)
        if record.time_to_first_token is not None:
            self.first_token.observe(record.time_to_first_token)
        if record.input_tokens:
            self.input_tokens.inc(record.input_tokens)
        if record.output_tokens and record.outcome == "ok":
            self.output_tokens.inc(record.output_tokens)
        if record.attempts > 1:
            self.retries.inc(record.attempts - 1)
        if record.shortened:
            self.shortened.inc()
        if record.memory_refusals:
            self.memory_refusals.inc(record.memory_refusals)
        if record.memory_wait:
            self.memory_wait.inc(record.memory_wait)
        if self.multiprocess:  # no callbacks across processes: set on each call
            self.in_flight.set(_gauges.in_flight())
            self.waiting.set(_gauges.waiting())


def serve(port: int, addr: str) -> Metrics | None:
    """Create the metrics and serve them; ``None`` (and one warning) if not.

    Never raises: the app keeps running without metrics.
    """
    try:
        import prometheus_client
    except ImportError:
        _warn(
            f"metrics port {port} asked for, but prometheus-client is not "
            'installed (pip install "mlx-vlm-safe[prometheus]"); no metrics'
        )
        return None
    try:
        if os.environ.get(MULTIPROC):
            from prometheus_client import CollectorRegistry, multiprocess

            metrics = Metrics()
            served = CollectorRegistry()
            multiprocess.MultiProcessCollector(served)  # type: ignore[no-untyped-call]
        else:
            metrics = Metrics()
            served = prometheus_client.REGISTRY
    except ValueError as exc:  # "Duplicated timeseries": created twice
        _warn(f"metrics not created: {exc}")
        return None
    try:
        prometheus_client.start_http_server(port, addr=addr, registry=served)
    except OSError as exc:
        where = f"{addr}:{port}"
        if os.environ.get(MULTIPROC):
            _warn(
                f"metrics: {where} is in use ({exc.strerror}); in multiprocess "
                "mode another worker serves this one's metrics"
            )
        else:
            _warn(
                f"metrics: cannot serve on {where}: {exc.strerror or exc}; this "
                "process's calls are counted but not served (several workers? "
                f"set {MULTIPROC}, see docs/monitoring.md)"
            )
    return metrics


def _warn(message: str) -> None:
    sys.stderr.write(f"mlx_vlm_safe: warning: {message}\n")
