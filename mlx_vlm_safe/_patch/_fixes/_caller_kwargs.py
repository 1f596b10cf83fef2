"""The caller's keyword arguments reach ``generate_step`` again (0.1.7-0.1.9).

Strictly private. mlx-vlm 0.1.7-0.1.9's ``stream_generate(model, processor,
prompt, image=None, **kwargs)`` rebinds ``kwargs`` before it calls the module
global ``generate_step(input_ids, model, pixel_values, mask, **kwargs)``: to
``{}`` without an image, to ``prepare_inputs``' extra arrays with one. Every
caller keyword (``max_tokens``, ``temp``, ``repetition_penalty``, ...) is
dropped without a word, so every generation runs to ``generate_step``'s
default of 256 tokens, greedy. 0.1.10 (593a5b84) merges instead: the caller's
keywords less the ``resize_shape`` it popped, updated with the data extras.

Where the probe finds them dropped, two pieces put that merge back:

* a stream layer around the release's ``stream_generate`` (inside the memory
  guard, so it sees exactly the keywords the release is called with, the
  retry ladder's included) holds the call's own keywords in a context
  variable while it pulls the first item: that is when the release's
  generator body runs and calls ``generate_step``;
* ``generate_step``, replaced in every module that binds it, takes the
  keywords held for it (once) and calls the original with
  ``{**caller's, **release's}``, as 0.1.10 does.

A context variable, not a global: concurrent calls on other threads each see
their own keywords, and a ``generate_step`` called outside a patched stream
runs unchanged.
"""

from __future__ import annotations

import contextvars
import dis
import functools
import inspect
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ..._log import describe
from .._locate import Located, mark, with_globals
from .._report import Probe
from . import Context, FixSpec

NAME = "stream_kwargs"
#: The keyword ``stream_generate`` consumes itself in every release that has
#: it, so 0.1.10 never passes it on.
_CONSUMED = "resize_shape"
#: The probe's own keyword: no release reads it.
_SENTINEL = "mlx_vlm_safe_probe"

#: The keywords the current call's ``stream_generate`` was given, while its
#: first item is pulled; ``None`` outside that.
_HELD: contextvars.ContextVar[Mapping[str, object] | None] = contextvars.ContextVar(
    "mlx_vlm_safe_caller_kwargs", default=None
)


class _Reached(Exception):
    """Raised by the probe's ``generate_step``: the keywords it was given."""

    def __init__(self, kwargs: Mapping[str, object]) -> None:
        super().__init__("generate_step reached")
        self.kwargs = kwargs


def _fake_step(*args: object, **kwargs: object) -> Iterator[Any]:
    raise _Reached(kwargs)


class _Detokenizer:
    def reset(self) -> None:
        """Upstream resets the processor's detokenizer first."""


class _Tokenizer:
    eos_token_id = 1
    all_special_ids = (1,)

    def encode(self, text: str, **kwargs: object) -> list[int]:
        return [2]


class _Processor:
    tokenizer = _Tokenizer()
    detokenizer = _Detokenizer()


class _Config:
    model_type = "mlx_vlm_safe_probe"


class _Model:
    config = _Config()


class _NoLimit:
    """A ``wired_limit`` that does nothing (the real one fails off Metal)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _inputs(*args: object, **kwargs: object) -> dict[str, object]:
    """``prepare_inputs`` for a text-only prompt: ids, no pixels, no mask."""
    import mlx.core as mx

    return {"input_ids": mx.array([[2]]), "pixel_values": None, "attention_mask": None}


#: The opcodes that store a local (3.13 fuses two into one: 4 bits each).
_STORES = {
    dis.opmap[name]: name
    for name in ("STORE_FAST", "STORE_FAST_STORE_FAST", "STORE_FAST_LOAD_FAST")
    if name in dis.opmap
}


def _rebinds_kwargs(code: types.CodeType) -> bool:
    """Whether ``code`` may assign to its ``kwargs`` (0.1.0-0.1.9 do; 0.1.10+ never).

    A scan of the raw bytecode (``dis`` takes milliseconds on 0.7's
    ``stream_generate``). A ``kwargs`` that a nested function captures is
    stored another way: counted as rebound, so the probe stays inconclusive.
    """
    if "kwargs" in code.co_cellvars:
        return True
    try:
        index = code.co_varnames.index("kwargs")
    except ValueError:
        return False
    raw, extended = code.co_code, 0
    for at in range(0, len(raw), 2):
        op, arg = raw[at], raw[at + 1] | extended
        extended = arg << 8 if op == dis.EXTENDED_ARG else 0
        name = _STORES.get(op)
        if name == "STORE_FAST":
            hit = arg == index
        elif name == "STORE_FAST_STORE_FAST":
            hit = index in (arg >> 4, arg & 15)
        else:
            hit = name is not None and arg >> 4 == index
        if hit:
            return True
    return False


def probe_stream_kwargs(stream_generate: Callable[..., Any] | None) -> Probe:
    """Whether ``stream_generate`` passes the caller's keywords to ``generate_step``.

    First its code: a ``stream_generate`` that never assigns to its
    ``kwargs`` passes them on (0.1.10+; a raw bytecode scan, so nothing of
    the release runs). One that does is run: a clone of the release's own
    ``stream_generate`` (the real code object; nothing in ``mlx_vlm`` is
    touched) whose private globals hold a ``generate_step`` that stops it
    with the keywords it was given, and harmless ``prepare_inputs`` and
    ``wired_limit``; the fake model and processor give it a one-token prompt
    and no image. Where the fakes do not carry it that far, it stays
    inconclusive.
    """
    code = getattr(stream_generate, "__code__", None)
    if stream_generate is None or not isinstance(code, types.CodeType):
        return Probe(NAME, "absent", "no stream_generate")
    if "generate_step" not in code.co_names:
        return Probe(NAME, "absent", "stream_generate calls no generate_step")
    if not _rebinds_kwargs(code):
        return Probe(NAME, "passed", "read from its code: it never reassigns kwargs")
    clone = with_globals(
        stream_generate,
        generate_step=_fake_step,
        prepare_inputs=_inputs,
        wired_limit=_NoLimit,
    )
    stream: Any = None
    try:
        stream = clone(_Model(), _Processor(), prompt="", **{_SENTINEL: True})
        next(iter(stream), None)
    except _Reached as reached:
        if reached.kwargs.get(_SENTINEL) is True:
            return Probe(NAME, "passed")
        return Probe(
            NAME,
            "dropped",
            "stream_generate called generate_step without the caller's keyword "
            f"arguments (it got {sorted(reached.kwargs)})",
        )
    except Exception as exc:  # the fakes did not carry it to generate_step
        stopped = describe(exc, 200)
    else:
        stopped = "it ended without calling generate_step"
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    # An unexpected release: say so, and leave it be.
    return Probe(NAME, "inconclusive", f"{stopped}; it rebinds its kwargs")


def probe(located: Located) -> Probe:
    """The probe on the release's ``stream_generate``."""
    return probe_stream_kwargs(located.stream_generate)


def _parameters(fn: Callable[..., Any]) -> frozenset[str]:
    """The named parameters of ``fn``: keywords that never reach its ``**kwargs``."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - every release has one
        return frozenset()
    return frozenset(p.name for p in params if p.kind is not p.VAR_KEYWORD)


def holding_keywords(
    original: Callable[..., Iterator[object]],
) -> Callable[..., Iterator[object]]:
    """``original`` that holds its call's own keywords while its first item is made.

    The keywords held are those that land in the release's ``**kwargs``
    (``image=`` given by name binds to its parameter), less ``resize_shape``,
    which the release consumes.
    """
    named = _parameters(original) | {_CONSUMED}

    @functools.wraps(original)  # the memory guard reads its signature
    def stream(*args: object, **kwargs: object) -> Iterator[object]:
        steps = iter(original(*args, **kwargs))
        try:
            token = _HELD.set({k: v for k, v in kwargs.items() if k not in named})
            try:
                first = next(steps)
            except StopIteration:
                return
            finally:
                _HELD.reset(token)
            yield first
            yield from steps
        finally:
            close = getattr(steps, "close", None)
            if close is not None:
                close()

    return stream


def merging(original: Callable[..., Any]) -> Callable[..., Any]:
    """``generate_step`` that adds the held keywords under the release's own."""

    def generate_step(*args: Any, **kwargs: Any) -> Any:
        held = _HELD.get()
        if held is None:  # not called from a patched stream's first step
            return original(*args, **kwargs)
        _HELD.set(None)  # once: the call's one generate_step takes them
        return original(*args, **{**held, **kwargs})

    return mark(generate_step, original)


def build(original: Callable[..., Any], context: Context) -> object:
    """The merging ``generate_step`` (the layer is composed by the stream fix)."""
    return merging(original)


PASS_CALLER_KWARGS = FixSpec(
    "pass_caller_kwargs",
    "stream_generate() dropped every keyword argument of the caller (max_tokens, "
    "sampling) before calling generate_step; they now reach it as in 0.1.10",
    replaces="generate_step",
    when={NAME: frozenset({"dropped"})},
    build=build,
    probe=probe,
    root_cause=True,
    layer=holding_keywords,
    inner=True,  # next to the release: the keywords it is called with
    fixed_upstream_in="0.1.10",
    doctor="Every keyword argument of generate() and stream_generate() "
    "(max_tokens, temp, repetition_penalty, ...) is dropped silently in "
    "{where}: each call generates generate_step's default of 256 tokens, "
    "greedy (mlx-vlm {fixed} passes them on).",
)
