"""What the telemetry costs: generation speed with the observers off and on.

Run with a venv that has mlx-vlm, mlx, prometheus-client and the
OpenTelemetry SDK (the ``tests`` extra)::

    python benchmarks/bench_telemetry.py

A report, not a test: each figure is printed next to its floor, a miss is
marked ``MISS``, and the exit code is 0 either way.

Three observer sets on the same patched release, the tiny checkpoint:

* ``none``: no observer subscribed at all (the baseline);
* ``off``: what every process has with no port and no OTel provider: stats,
  the log line, and the OTel observer on the API's no-op providers (when
  opentelemetry-api is installed);
* ``on``: stats, the log line, Prometheus (its own registry) and the OTel SDK
  with in-memory span exporter and metric reader.

1. End-to-end tokens/s of ``generate(max_tokens=128)``, ``off`` / ``none``
   and ``on`` / ``none``: the median of per-pair ratios over interleaved
   pairs, the order alternating within pairs (drift hits both alike). Per
   CPU second of the process (``time.process_time``: all its threads), which
   is what the observers add to, and per wall second, which on a shared
   machine mostly measures the neighbours (printed, not judged).
2. Per call: ``emit(record)`` of a typical record, best of rounds, for each
   set minus ``none``, against 1 % of a real 128-token call (CPU time), and
   the tokens/s ratio that cost allows: on a busy machine the measured ratio
   of part 1 wanders by more than 1 % either way between identical runs,
   while this figure is stable.
"""

from __future__ import annotations

import dataclasses
import statistics
import timeit
from collections.abc import Callable
from time import perf_counter, process_time
from typing import Any

import mlx_vlm

import mlx_vlm_safe
from mlx_vlm_safe import _call_record, instrumentation
from mlx_vlm_safe.instrumentation import _logging, _prometheus, _stats
from mlx_vlm_safe.testing import build_tiny_checkpoint, tiny_image_path, tiny_prompt

TOKENS = 128
PAIRS = 15
FLOOR = 0.99

Observers = tuple[Callable[[_call_record.CallRecord], object], ...]


def _sets() -> dict[str, Observers]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
        InMemorySpanExporter,
    )
    from prometheus_client import CollectorRegistry

    from mlx_vlm_safe.instrumentation._otel import Telemetry

    default = _call_record.observers()  # what the patch subscribed: the "off" set
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    sdk = Telemetry(tracer_provider, MeterProvider([InMemoryMetricReader()]))
    metrics = _prometheus.Metrics(CollectorRegistry())
    on = (_stats.observe, _logging.observe, metrics.observe, sdk.observe)
    return {"none": (), "off": default, "on": on}


def _use(observers: Observers) -> None:
    _call_record._observers = observers  # the benchmark swaps the sets


def _per_call(sets: dict[str, Observers], budget: float) -> list[str]:
    """Part 2: what ``emit()`` costs with each set; the misses."""
    misses: list[str] = []
    record = _call_record.CallRecord(
        operation="generate",
        outcome="ok",
        error_type=None,
        duration=0.5,
        time_to_first_token=0.05,
        input_tokens=40,
        output_tokens=128,
        finish_reason="length",
        attempts=1,
        shortened=False,
        requested_max_tokens=128,
        max_tokens=128,
        memory_wait=0.0,
        memory_refusals=0,
        deadline=None,
    )
    failed = dataclasses.replace(
        record,
        outcome="error",
        error_type="TypeError",
        duration=0.01,
        time_to_first_token=None,
        output_tokens=None,
        finish_reason=None,
    )
    _logging.LOGGER.disabled = True  # time the observer, not stderr
    print("\n2. per call record: emit() with the set minus with none, best of 7")
    for name in ("off", "on"):
        for label, rec in (("ok", record), ("error", failed)):
            cost = []
            for observers in ((), sets[name]):
                _use(observers)
                timer = timeit.Timer(lambda rec=rec: _call_record.emit(rec))
                cost.append(min(timer.repeat(7, 2000)) / 2000)
            extra = cost[1] - cost[0]
            mark = "ok" if extra <= budget else "MISS"
            misses += [f"per call {name} {label}"] if mark == "MISS" else []
            bound = 1 - extra / (budget * 100)
            print(
                f"   {name:>3}, {label:<5} record: {extra * 1e6:7.1f} us "
                f"(1 % of a {TOKENS}-token call: {budget * 1e6:.0f} us) {mark}; "
                f"tokens/s ratio it allows: {bound:.5f}"
            )
    return misses


def main() -> None:
    """Print the report (see the module docstring)."""
    mlx_vlm_safe.patch()
    model, processor = mlx_vlm.load(str(build_tiny_checkpoint()))
    prompt = tiny_prompt(processor, model.config, "Describe the picture.")
    image = [str(tiny_image_path())]
    sets = _sets()
    print(f"mlx-vlm {mlx_vlm.__version__}; observer sets:")
    for name, observers in sets.items():
        print(f"  {name:<5} {[getattr(o, '__qualname__', o) for o in observers]}")

    def speed(observers: Observers) -> tuple[float, float]:
        """Tokens per CPU second and per wall second of one call."""
        _use(observers)
        cpu, wall = process_time(), perf_counter()
        result: Any = mlx_vlm.generate(
            model, processor, prompt, image=image, max_tokens=TOKENS, verbose=False
        )
        cpu, wall = process_time() - cpu, perf_counter() - wall
        tokens = float(result.generation_tokens)
        return tokens / cpu, tokens / wall

    for _ in range(3):
        speed(sets["on"])  # warm-up
    misses: list[str] = []
    call_seconds = []
    print(f"\n1. tokens/s of generate(max_tokens={TOKENS}), {PAIRS} interleaved pairs")
    for name in ("off", "on"):
        cpu_ratios, wall_ratios = [], []
        for i in range(PAIRS):
            if i % 2:
                base = speed(sets["none"])
                with_set = speed(sets[name])
            else:
                with_set = speed(sets[name])
                base = speed(sets["none"])
            cpu_ratios.append(with_set[0] / base[0])
            wall_ratios.append(with_set[1] / base[1])
            call_seconds.append(TOKENS / base[0])
        ratio = statistics.median(cpu_ratios)
        mark = "ok" if ratio >= FLOOR else "MISS"
        misses += [f"tokens/s {name}/none"] if mark == "MISS" else []
        print(
            f"   {name:>3} / none: median ratio per CPU second {ratio:.4f} "
            f"(floor {FLOOR}) {mark}; per wall second "
            f"{statistics.median(wall_ratios):.4f} (not judged)"
        )

    budget = statistics.median(call_seconds) * 0.01
    misses += _per_call(sets, budget)
    _logging.LOGGER.disabled = False
    _use(sets["off"])
    instrumentation.reset_stats()
    print("\nmisses: " + (", ".join(misses) if misses else "none"))


if __name__ == "__main__":
    main()
