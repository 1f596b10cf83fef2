"""The replacement objects the patch installs.

Strictly private. Three replacements, each for one defect class:

* :func:`safe_wired_limit` replaces the ``wired_limit`` that ``stream_generate``
  looks up at call time, where the release's own one swallows exceptions or
  fails on entry off Metal. It is the root-cause fix: the real error, its type,
  message and traceback, reaches the caller again, and so does Ctrl-C.
* :func:`wrap_stream_generate` passes every item through unchanged, records
  why the stream ended (:class:`~._results.Outcome`) and, on releases whose
  ``generate()`` dereferences the last item unguarded, never ends without an
  item. Because it is installed as the module global ``generate()`` looks up,
  even a ``generate`` captured before the patch can no longer hit ``None``.
* :func:`wrap_generate` never returns ``None`` and adds the retry policy.

Plain closures, not ``wrapt`` proxies: these are module-level functions (no
descriptor binding to get right), ``functools.update_wrapper`` keeps the name,
docstring, ``__wrapped__`` and therefore ``inspect.signature``, and a closure
costs ~60 ns per call against ~430 ns for a ``FunctionWrapper`` here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from ._results import LAST_OUTCOME, TOKENS, Outcome, empty_result, finish_reason_of

F = TypeVar("F", bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True)
class Behaviour:
    """What the wrappers need to know about the installed release."""

    never_empty: bool
    shape: str
    result_class: type | None
    stats: Mapping[str, object] | None
    empty_item: object
    default_max_tokens: object
    name: str = "mlx_vlm.generate"

    def empty(self) -> object:
        """An empty result of the release's own shape."""
        return empty_result(self.shape, self.result_class, self.stats)


def _mark(wrapper: F, original: Callable[..., Any]) -> F:
    """Copy name, docs and ``__wrapped__``; mark as ours so we never stack."""
    functools.update_wrapper(wrapper, original)
    wrapper.__mlx_vlm_safe__ = True  # type: ignore[attr-defined]
    return wrapper


def _metal_available() -> bool:
    mx = sys.modules.get("mlx.core")
    metal = getattr(mx, "metal", None)
    is_available = getattr(metal, "is_available", None)
    return bool(is_available()) if callable(is_available) else False


def safe_wired_limit(original: Callable[..., Any]) -> Callable[..., Any]:
    """A ``wired_limit`` that lets every exception through.

    On Metal the release's own context manager runs (it sets the wired memory
    limit and propagates errors there); elsewhere there is no wired limit to
    set, so it only yields. No ``finally: return``, no ``device_info()``.
    """

    @contextlib.contextmanager
    def wired_limit(model: object, streams: object = None) -> Iterator[None]:
        if _metal_available():
            with original(model, streams):
                yield
        else:
            yield

    return _mark(wired_limit, original)


def check_max_tokens(kwargs: Mapping[str, object]) -> None:
    """Refuse a ``max_tokens`` that would make mlx-vlm generate forever.

    mlx-vlm stops when the token counter *equals* ``max_tokens``; a string
    (``"512"`` straight from a JSON body) or a negative number never does, and
    the call runs until memory runs out. That is bad input: say so at once.
    """
    value = kwargs.get("max_tokens")
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"max_tokens must be an int, got {value!r}")
    if value < 0:
        raise ValueError(f"max_tokens must be >= 0, got {value!r}")


def _observed(stream: Iterator[object], max_tokens: object) -> Iterator[object]:
    """Pass items through; record how many tokens came and why the stream ended."""
    items = 0
    last: object = None
    LAST_OUTCOME.set(None)
    try:
        for item in stream:
            items += 1
            last = item
            yield item
    finally:
        tokens = getattr(last, "generation_tokens", items)
        TOKENS.set(tokens if isinstance(tokens, int) else items)
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    LAST_OUTCOME.set(finish_reason_of(last, items, max_tokens))


def _never_empty(stream: Iterator[object], empty_item: object) -> Iterator[object]:
    """Yield ``empty_item`` if ``stream`` ends without an item."""
    items = 0
    try:
        for item in stream:
            items += 1
            yield item
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    if items == 0:
        yield empty_item


def wrap_stream_generate(
    original: Callable[..., Iterator[object]],
    behaviour: Behaviour,
    retrying: Callable[..., Iterator[object]] | None = None,
) -> Callable[..., Iterator[object]]:
    """Wrap ``stream_generate``: observe, retry before the first item, never empty.

    The layers, outermost first: the never-empty guard (only where the
    release's ``generate()`` needs it), the retry policy (which must still see
    an empty stream as empty, so it sits inside the guard), the observer.
    """
    default_max_tokens = behaviour.default_max_tokens

    def observed(*args: object, **kwargs: object) -> Iterator[object]:
        max_tokens = kwargs.get("max_tokens", default_max_tokens)
        return _observed(original(*args, **kwargs), max_tokens)

    def stream_generate(*args: object, **kwargs: object) -> Iterator[object]:
        check_max_tokens(kwargs)
        if retrying is None:
            stream = observed(*args, **kwargs)
        else:
            stream = retrying(observed, args, kwargs)
        if behaviour.never_empty:
            return _never_empty(stream, behaviour.empty_item)
        return stream

    return _mark(stream_generate, original)


def _text_of(result: object) -> object:
    if isinstance(result, tuple):
        return result[0] if result else ""
    return result if isinstance(result, str) else getattr(result, "text", "")


def wrap_generate(
    original: Callable[..., object],
    behaviour: Behaviour,
    retrying: Callable[..., object] | None = None,
) -> Callable[..., object]:
    """Wrap ``generate``: never ``None``; retries through ``retrying``."""
    call = retrying

    def generate(*args: object, **kwargs: object) -> object:
        check_max_tokens(kwargs)
        LAST_OUTCOME.set(None)
        if call is None:
            result = original(*args, **kwargs)
        else:
            result = call(original, args, kwargs)
        if result is None:
            result = behaviour.empty()
        if LAST_OUTCOME.get() is None:
            # No stream told us (0.1.0-0.1.6 drive generate_step themselves,
            # or an upstream early return): judge by the text.
            LAST_OUTCOME.set(Outcome("stop" if _text_of(result) else "empty", 0))
        return result

    return _mark(generate, original)
