"""Telemetry of the patched calls: stats, logs, Prometheus, OpenTelemetry.

Every patched ``generate()`` / ``stream_generate()`` call ends in one
:class:`~mlx_vlm_safe._call_record.CallRecord`; each backend here is an
observer of those records (one module each), so nothing of this package runs
on the generation path itself:

* ``_stats``: :func:`stats`, always on (a few integers per call).
* ``_logging``: one WARNING per failed or shortened call, always on.
* ``_prometheus``: only when ``MLX_VLM_SAFE_METRICS_PORT`` is set (needs
  ``prometheus-client``).
* ``_otel``: only when asked for: ``MLX_VLM_SAFE_OTEL=1``,
  :func:`enable_otel`, or the ``opentelemetry-instrument`` entry point
  (``_otel_instrumentor``); never merely because ``opentelemetry-api`` is
  installed (importing it, and a no-op span per call, cost about 10 µs a call).

The patch calls :func:`start` when it applies; this face imports nothing
optional, so ``import mlx_vlm_safe`` stays cheap. See ``docs/monitoring.md``.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import sys
import threading
from collections.abc import Callable
from typing import Any

from .. import _env
from .._call_record import subscribe
from . import _gauges, _logging, _stats
from ._stats import Percentiles, Stats, stats

__all__ = [
    "ADDR_VARIABLE",
    "PORT_VARIABLE",
    "Percentiles",
    "Stats",
    "disable_otel",
    "enable_otel",
    "reset_stats",
    "start",
    "stats",
]

#: Serve Prometheus metrics on this port (``mlx-vlm-safe run --metrics-port``).
PORT_VARIABLE = "MLX_VLM_SAFE_METRICS_PORT"
#: ... on this address (default 127.0.0.1: metrics are not for the internet).
ADDR_VARIABLE = "MLX_VLM_SAFE_METRICS_ADDR"
DEFAULT_ADDR = "127.0.0.1"
#: Emit OpenTelemetry metrics and spans through the global providers.
OTEL_VARIABLE = "MLX_VLM_SAFE_OTEL"


def parse_port(raw: str) -> int | None:
    """``""`` -> None (off), else a port 1-65535 (``ValueError`` otherwise)."""
    text = raw.strip()
    if not text:
        return None
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError("a port is a whole number from 1 to 65535")
    return int(text)


def parse_addr(raw: str) -> str:
    """An IP address or ``localhost`` (``ValueError`` otherwise)."""
    text = raw.strip()
    if text != "localhost":
        ipaddress.ip_address(text)  # raises ValueError with the reason
    return text


_env.register(PORT_VARIABLE, parse_port)
_env.register(ADDR_VARIABLE, parse_addr)
_env.register(
    OTEL_VARIABLE, lambda raw: _env.parse_flag(OTEL_VARIABLE, {OTEL_VARIABLE: raw})
)

_lock = threading.Lock()
_started = False
_otel_off: Callable[[], None] | None = None


def start(*, in_flight: Callable[[], int], waiting: Callable[[], int]) -> None:
    """Subscribe the backends (once per process); the patch calls it when it applies.

    ``in_flight`` and ``waiting`` count the calls running and the calls
    waiting for memory (the gauges). Never raises: telemetry that cannot
    start says why on stderr and the app runs on.
    """
    global _started  # noqa: PLW0603 - once per process, under the lock
    with _lock:
        _gauges.wire(in_flight=in_flight, waiting=waiting)
        if _started:
            return
        _started = True
    subscribe(_stats.observe)
    subscribe(_logging.observe)
    _start_prometheus()
    if _otel_off is None and _otel_asked():  # not already enabled explicitly
        enable_otel()


def _otel_asked() -> bool:
    """``MLX_VLM_SAFE_OTEL`` is true and ``opentelemetry-api`` is installed.

    Asked for but not installed: one line on stderr, and the app runs on.
    """
    try:
        if not _env.parse_flag(OTEL_VARIABLE):
            return False
    except ValueError:
        return False  # the patch has printed the bad value
    try:  # looks in the (namespace) package's folders; imports nothing else
        found = importlib.util.find_spec("opentelemetry.metrics") is not None
    except (ImportError, ValueError):  # no "opentelemetry" at all
        found = False
    if not found:
        print(
            f"mlx_vlm_safe: warning: {OTEL_VARIABLE} is set but opentelemetry-api "
            'is not installed (pip install "mlx-vlm-safe[otel]"); no telemetry',
            file=sys.stderr,
        )
    return found


def _start_prometheus() -> None:
    import os

    try:
        port = parse_port(os.environ.get(PORT_VARIABLE, ""))
        addr = parse_addr(os.environ.get(ADDR_VARIABLE) or DEFAULT_ADDR)
    except ValueError:
        return  # the patch has printed the bad value (``_env.warn_bad_values``)
    if port is None:
        return
    from ._prometheus import serve

    metrics = serve(port, addr)
    if metrics is not None:
        subscribe(metrics.observe)


def enable_otel(*, tracer_provider: Any = None, meter_provider: Any = None) -> None:
    """Emit OpenTelemetry metrics and spans for every patched call.

    Called for you when the patch applies with ``MLX_VLM_SAFE_OTEL=1``, or
    under ``opentelemetry-instrument`` (with the global providers, read at
    each call); call it yourself to turn it on in code or to use other
    providers. Replaces the previous OTel observer.

    Raises:
        ImportError: ``opentelemetry-api`` is not installed.

    """
    global _otel_off  # noqa: PLW0603
    from ._otel import Telemetry

    telemetry = Telemetry(tracer_provider, meter_provider)
    with _lock:
        if _otel_off is not None:
            _otel_off()
        _otel_off = subscribe(telemetry.observe)


def disable_otel() -> None:
    """Stop emitting OpenTelemetry data (until :func:`enable_otel`)."""
    global _otel_off  # noqa: PLW0603
    with _lock:
        if _otel_off is not None:
            _otel_off()
            _otel_off = None


def reset_stats() -> None:
    """Start :func:`stats` counting again from zero."""
    _stats.reset()
