"""Plant faults into the real mlx-vlm generation, for tests.

Why: the failures this library exists for (an error after k tokens, Ctrl-C in
the middle of a generation, a stream that ends with nothing) are hard to cause
on purpose with a real model. These helpers put them exactly where they would
happen, while everything around them (``load()``, preprocessing, prefill,
decoding, detokenising) stays the real code of the installed release.

The seam is ``generate_step``: ``stream_generate`` looks it up in its module's
globals on every call (every release from 0.1.7 on), so swapping that global
reaches all callers, including references captured before the swap. Test-only:
the swap is visible to every thread while it is in place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
from collections.abc import Callable, Iterator
from typing import Any

from .._layout import locate


@dataclasses.dataclass
class FaultRecord:
    """What a planted fault saw: calls made, tokens let through, faults fired."""

    calls: int = 0
    tokens: int = 0
    fired: int = 0


def _stream_scope() -> dict[str, Any]:
    located = locate(importlib.import_module("mlx_vlm"))
    if located.stream_generate is None:
        raise RuntimeError("this mlx-vlm release has no stream_generate to plant into")
    scope: dict[str, Any] = located.stream_generate.__globals__
    if not callable(scope.get("generate_step")):
        raise RuntimeError("this mlx-vlm release has no generate_step seam")
    return scope


@contextlib.contextmanager
def plant_fault(
    exc: BaseException | type[BaseException],
    *,
    after_tokens: int | None = 0,
    times: int | None = None,
) -> Iterator[FaultRecord]:
    """Raise ``exc`` inside the real generation after ``after_tokens`` tokens.

    Args:
        exc: any ``BaseException`` instance or class (``KeyboardInterrupt``
            included: it is raised exactly where Ctrl-C would land).
        after_tokens: ``0`` raises before the first token (where prefill and
            argument errors happen); ``k`` lets k real tokens through first;
            ``None`` raises when the real decoder is done (at the final item).
        times: fire only on the first ``times`` generations (``None``: always),
            to make a transient failure that a retry recovers from.

    Yields:
        A :class:`FaultRecord` to assert on.

    """
    if after_tokens is not None and after_tokens < 0:
        raise ValueError(f"after_tokens must be >= 0 or None, got {after_tokens!r}")
    scope = _stream_scope()
    real: Callable[..., Iterator[Any]] = scope["generate_step"]
    record = FaultRecord()

    def generate_step(*args: Any, **kwargs: Any) -> Iterator[Any]:
        record.calls += 1
        armed = times is None or record.fired < times
        steps = real(*args, **kwargs)
        produced = 0
        while True:
            if armed and after_tokens is not None and produced == after_tokens:
                record.fired += 1
                raise exc
            try:
                item = next(steps)
            except StopIteration:
                break
            produced += 1
            record.tokens += 1
            yield item
        if armed and after_tokens is None:
            record.fired += 1
            raise exc

    scope["generate_step"] = generate_step
    try:
        yield record
    finally:
        scope["generate_step"] = real


def _nothing(*args: Any, **kwargs: Any) -> Iterator[Any]:
    """A generator that ends at once; no closure, so its code can be swapped in."""
    yield from ()


@contextlib.contextmanager
def empty_stream() -> Iterator[FaultRecord]:
    """Make the release's own ``stream_generate`` end without yielding anything.

    That is what callers of 0.3.2-0.3.10 saw off Metal whenever an error was
    swallowed. The real function object keeps its identity (so every captured
    reference and every wrapper sees the change); only its code is swapped for
    the duration.
    """
    function = locate(importlib.import_module("mlx_vlm")).stream_generate
    if function is None:
        raise RuntimeError("this mlx-vlm release has no stream_generate")
    record = FaultRecord(fired=1)
    saved = function.__code__
    function.__code__ = _nothing.__code__
    try:
        yield record
    finally:
        function.__code__ = saved
