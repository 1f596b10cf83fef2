"""The fixes that wrap ``stream_generate`` and ``generate`` themselves.

Strictly private. Every release gets one of the two stream fixes (the
never-empty guard only where ``generate()`` dereferences the last item
unguarded) and the None-safe ``generate()``; the wrappers are in
``_patch._wrappers``. An ``inconclusive`` empty-stream probe keeps the guard:
one empty item is harmless.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._probes import EMPTY_STREAM
from .._wrappers import wrap_generate, wrap_stream_generate
from . import Context, FixSpec


def _stream(original: Callable[..., Any], context: Context) -> object:
    return wrap_stream_generate(
        original,
        context.behaviour,
        context.retry_stream,
        inner=context.stream_layers(inner=True),
        outer=context.stream_layers(inner=False),
    )


def _generate(original: Callable[..., Any], context: Context) -> object:
    return wrap_generate(original, context.behaviour, context.retry_call)


NEVER_EMPTY_STREAM = FixSpec(
    "never_empty_stream",
    "generate() dereferences the last stream item unguarded; the stream now "
    "always yields at least one item",
    replaces="stream_generate",
    when={EMPTY_STREAM: frozenset({"unguarded", "inconclusive"})},
    build=_stream,
    root_cause=True,
    fixed_upstream_in="0.6.0",
    doctor="generate() dereferences the last stream item unguarded: a stream "
    "that yields nothing ends as the same AttributeError.",
)
OBSERVED_STREAM = FixSpec(
    "observed_stream",
    "stream_generate() records why it ended and retries failures before its first item",
    replaces="stream_generate",
    when={EMPTY_STREAM: frozenset({"guarded"})},
    build=_stream,
)
NONE_SAFE_GENERATE = FixSpec(
    "none_safe_generate",
    "generate() never returns None and retries what can succeed on retry",
    replaces="generate",
    build=_generate,
)
