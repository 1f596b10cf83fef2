"""Empty results in the installed release's own shape, and why a call ended.

Strictly private. ``generate()`` must never return ``None``, but it must not
invent a new return type either: code written for 0.1.x unpacks a ``str``,
0.1.26-0.2.0 a ``(text, stats)`` tuple, 0.3+ a ``GenerationResult`` whose
fields grew from 8 to 24. So an empty result is built by introspecting what
the release returns, the way upstream 0.6+ does it itself
(``GenerationResult(text="", peak_memory=...)``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any, Final, Literal, TypeAlias

from . import _mlx

FinishReason = Literal["stop", "length", "empty"]

_ZERO_BY_NAME: Mapping[str, object] = {"str": "", "int": 0, "float": 0.0, "bool": False}


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """Why the last generation in this context ended.

    Attributes:
        finish_reason: ``"stop"`` (the model or a stop criterion ended it),
            ``"length"`` (it reached ``max_tokens``) or ``"empty"`` (nothing
            was generated and no error was raised).
        generation_tokens: tokens generated, as the release counted them.
        shortened: ``finish_reason`` is ``"length"`` at a ``max_tokens``
            smaller than the caller's: a retry step cut the answer short.
        requested_max_tokens: what the caller asked for.

    """

    finish_reason: FinishReason
    generation_tokens: int
    #: The answer hit a smaller ``max_tokens`` than the caller asked for (a
    #: retry ladder step): it is shorter than the requested answer would be.
    shortened: bool = False
    #: The caller's ``max_tokens`` (or the release's default), where known.
    requested_max_tokens: int | None = dataclasses.field(default=None, compare=False)


#: The ``finish_reason`` of a stream that raised or was closed before its end.
INCOMPLETE: Any = object()

#: How a patched stream ended, as raw facts: ``(tokens, empty, finish_reason,
#: max_tokens, requested)``. ``finish_reason`` is the last item's own (0.6+),
#: ``None``, or :data:`INCOMPLETE`; ``empty`` says it generated nothing and
#: raised nothing; ``max_tokens`` is what this stream ran with, ``requested``
#: what the caller asked for (they differ after a retry ladder step).
#: A plain tuple, because it is made on every call and a named record costs
#: several times more to build; readers use the field positions below, and
#: ``last_outcome()`` builds an :class:`Outcome` from it when asked.
StreamEnd: TypeAlias = tuple[int, bool, object, object, object]
#: Positions of :data:`StreamEnd`'s fields (literals, so a type checker
#: knows each field's type).
TOKENS: Final = 0
EMPTY: Final = 1
REASON: Final = 2
MAX_TOKENS: Final = 3
REQUESTED: Final = 4

#: How the last patched generation in this context (thread, asyncio task)
#: ended: what ``last_outcome()`` reads. A context's own variable, set once
#: per call when its stream or its ``generate()`` ends, so ``retries_disabled()``
#: blocks and calls that run no stream leave it as it was.
LAST_END: ContextVar[StreamEnd | None] = ContextVar("mlx_vlm_safe_end", default=None)
record_end = LAST_END.set
last_end = LAST_END.get


def last_outcome() -> Outcome | None:
    """The :class:`Outcome` of the last patched generation in this thread/task.

    Result types stay the release's own (a ``str`` cannot carry a finish
    reason), so the reason is kept next to the call instead. ``None`` before
    any call, and after a generation that raised or was closed early.
    """
    return outcome_of(LAST_END.get())


def _zero(field: dataclasses.Field[object]) -> object:
    hint = (
        field.type
        if isinstance(field.type, str)
        else getattr(field.type, "__name__", "")
    )
    return _ZERO_BY_NAME.get(str(hint), None)


def build_result(result_class: type, **values: object) -> object:
    """Instantiate a ``GenerationResult`` of any release with zero defaults.

    Fields with a default keep it (0.3+ defaults them all); fields without one
    (0.1.7-0.2.0) get the zero of their annotated type, or ``None``.
    """
    kwargs: dict[str, object] = {}
    for field in dataclasses.fields(result_class):
        if field.name in values:
            kwargs[field.name] = values[field.name]
        elif (
            field.default is dataclasses.MISSING
            and field.default_factory is dataclasses.MISSING
        ):
            kwargs[field.name] = _zero(field)
    return result_class(**kwargs)


def peak_memory_gb() -> float:
    """Mlx's peak memory in GB, as upstream reports it; 0.0 if unknown."""
    mx = _mlx.core()
    getter = getattr(mx, "get_peak_memory", None)
    try:
        return float(getter()) / 1e9 if callable(getter) else 0.0
    except Exception:  # a diagnostic number must never fail a call
        return 0.0


def empty_result(
    shape: str, result_class: type | None, stats: Mapping[str, object] | None
) -> object:
    """The empty result of the installed release's shape."""
    if shape == "tuple":
        zeroed = {
            k: type(v)() if isinstance(v, (int, float)) else v
            for k, v in (stats or {}).items()
        }
        return ("", zeroed)
    if shape == "result" and result_class is not None:
        values: dict[str, object] = {"text": ""}
        if any(f.name == "peak_memory" for f in dataclasses.fields(result_class)):
            values["peak_memory"] = peak_memory_gb()
        return build_result(result_class, **values)
    return ""


#: How a ``max_tokens=0`` call ends: nothing generated, by length, not empty.
ZERO_TOKENS_END: StreamEnd = (0, False, "length", 0, 0)


def ran_out(item: object) -> object:
    """``item`` with ``finish_reason="length"`` where its type has the field."""
    if (
        dataclasses.is_dataclass(item)
        and not isinstance(item, type)
        and any(f.name == "finish_reason" for f in dataclasses.fields(item))
    ):
        return dataclasses.replace(item, finish_reason="length")
    return item


def text_of(result: object) -> object:
    """The text of a result of any release's shape (str, tuple, ``.text``)."""
    if isinstance(result, tuple):
        return result[0] if result else ""
    return result if isinstance(result, str) else getattr(result, "text", "")


def text_end(text: object) -> StreamEnd:
    """The :data:`StreamEnd` of a ``generate()`` that drove no stream."""
    return (0, not text, "stop" if text else None, None, None)


def outcome_of(end: StreamEnd | None) -> Outcome | None:
    """Derive an :class:`Outcome` from how a stream ended.

    0.6+ items carry ``finish_reason``; before that we compare the release's
    own token count with ``max_tokens`` (a stop token that is exactly the last
    allowed one reads as ``"length"``: the two cannot be told apart there).
    """
    if end is None:
        return None
    tokens, empty, reason, max_tokens, requested = end
    if empty:
        return Outcome("empty", 0)
    if reason is INCOMPLETE:
        return None
    asked = requested if isinstance(requested, int) else None
    finish: FinishReason
    if reason == "stop" or reason == "length":  # noqa: PLR1714 - str only
        finish = reason
    elif isinstance(max_tokens, int) and tokens >= max_tokens:
        finish = "length"
    else:
        finish = "stop"
    # Cut by a smaller limit than asked, and shorter than asked: 0.1.7-0.1.9
    # drop max_tokens, so an answer there can reach the length asked for.
    shortened = (
        finish == "length"
        and asked is not None
        and isinstance(max_tokens, int)
        and max_tokens < asked
        and tokens < asked
    )
    return Outcome(finish, tokens, shortened, asked)
