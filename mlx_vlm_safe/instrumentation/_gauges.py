"""The two gauges' sources: calls in flight, calls waiting for memory.

Strictly private. Both live in the patch (``_patch._calls``, the memory
guard), which imports this package, not the other way round: the patch hands
its two counting functions over when it applies (:func:`wire`), and until
then both read 0. A source that raises reads 0 too: a gauge must never be why
a scrape fails.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["in_flight", "waiting", "wire"]

_sources: dict[str, Callable[[], int]] = {}


def wire(*, in_flight: Callable[[], int], waiting: Callable[[], int]) -> None:
    """Use these functions for the two gauges from now on."""
    _sources["in_flight"] = in_flight
    _sources["waiting"] = waiting


def _read(name: str) -> int:
    source = _sources.get(name)
    if source is None:
        return 0
    try:
        return int(source())
    except Exception:
        return 0


def in_flight() -> int:
    """Patched calls running now."""
    return _read("in_flight")


def waiting() -> int:
    """Patched calls waiting for memory now."""
    return _read("waiting")
