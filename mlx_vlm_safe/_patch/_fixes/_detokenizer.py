"""Concurrent generations on one processor: a private detokenizer for each.

Strictly private. mlx-vlm up to 0.4.4 stream through ``processor.detokenizer``,
one object per loaded processor that every call resets and feeds: two calls
at once (web handlers, a thread pool) feed the same one, and each returns a
mix of both texts. 0.5.0 gives each call its own copy
(``make_streaming_detokenizer``); where the probe finds the shared one, the
patch does the same, but only for a call that starts while another is
running, so sequential callers pay one uncontended lock and no copy.
"""

from __future__ import annotations

import copy
import threading
import types
from collections.abc import Callable, Iterator

from .._locate import Located
from .._report import Probe
from . import FixSpec

NAME = "detokenizer"


def _names(code: types.CodeType) -> set[str]:
    """Every global and attribute name ``code`` and its nested functions use."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def probe_detokenizer(stream_generate: Callable[..., object] | None) -> Probe:
    """Whether ``stream_generate`` makes a detokenizer per call or shares one.

    Read from the function's code (which names it uses), since running it
    needs a real model: ``make_streaming_detokenizer`` is 0.5.0+'s per-call
    copy; a bare ``detokenizer`` attribute is the processor's shared one.
    """
    code = getattr(stream_generate, "__code__", None)
    if not isinstance(code, types.CodeType):
        return Probe(NAME, "absent", "no stream_generate to read")
    names = _names(code)
    if "make_streaming_detokenizer" in names:
        return Probe(NAME, "per_call")
    if "detokenizer" in names:
        return Probe(NAME, "shared", "stream_generate uses processor.detokenizer")
    return Probe(NAME, "absent", "stream_generate uses no detokenizer")


def probe(located: Located) -> Probe:
    """The probe on the release's ``stream_generate``."""
    return probe_detokenizer(located.stream_generate)


def _with_private_detokenizer(
    args: tuple[object, ...], kwargs: dict[str, object]
) -> tuple[tuple[object, ...], dict[str, object]]:
    """Give the call a processor of its own, with its own detokenizer.

    A shallow copy: the tokenizer, image processor and the rest stay shared.
    """
    positional = len(args) > 1
    processor = args[1] if positional else kwargs.get("processor")
    detokenizer = getattr(processor, "detokenizer", None)
    if detokenizer is None:
        return args, kwargs
    twin = copy.copy(processor)
    private = _fresh(detokenizer)
    reset = getattr(private, "reset", None)
    if callable(reset):
        reset()  # fresh buffers, not the shared object's
    twin.detokenizer = private  # type: ignore[attr-defined]
    if positional:
        return (args[0], twin, *args[2:]), kwargs
    return args, {**kwargs, "processor": twin}


def _fresh(detokenizer: object) -> object:
    """A copy of ``detokenizer`` (reset by the caller).

    ``copy.copy`` fails on mlx-vlm's ``NaiveStreamingDetokenizer``: its base
    declares a ``text`` slot that the subclass shadows with a read-only
    property. Its state lives in ``__dict__`` and ``reset()`` sets the slots.
    """
    try:
        return copy.copy(detokenizer)
    except (AttributeError, TypeError):
        private = object.__new__(type(detokenizer))
        private.__dict__.update(vars(detokenizer))
        return private


def isolating(
    original: Callable[..., Iterator[object]],
) -> Callable[..., Iterator[object]]:
    """``original`` where a call that overlaps another gets its own detokenizer."""
    lock = threading.Lock()
    running = 0  # generations in flight

    def stream(*args: object, **kwargs: object) -> Iterator[object]:
        # A generator: this runs at the first next(), when generation starts.
        nonlocal running
        with lock:
            overlapping = running > 0
            running += 1
        try:
            if overlapping:
                args, kwargs = _with_private_detokenizer(args, kwargs)
            yield from original(*args, **kwargs)
        finally:
            with lock:
                running -= 1

    return stream


PRIVATE_DETOKENIZER = FixSpec(
    "private_detokenizer",
    "stream_generate() fed one shared detokenizer per processor, so concurrent "
    "calls mixed each other's text; a call that overlaps another now gets its "
    "own copy",
    when={NAME: frozenset({"shared"})},
    probe=probe,
    layer=isolating,  # outer: it swaps the processor argument
    fixed_upstream_in="0.5.0",
    doctor="Concurrent generate() calls on one loaded model (web handlers, "
    "thread pools) mix each other's text without the patch: the release feeds "
    "one shared detokenizer per processor.",
)
