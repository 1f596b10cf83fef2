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
import sys
import typing
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Literal

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

    """

    finish_reason: FinishReason
    generation_tokens: int


LAST_OUTCOME: ContextVar[Outcome | None] = ContextVar(
    "mlx_vlm_safe_last_outcome", default=None
)


#: Tokens the last stream attempt in this context produced, error or not; the
#: retry layer records it per attempt.
TOKENS: ContextVar[int] = ContextVar("mlx_vlm_safe_tokens", default=0)


def last_outcome() -> Outcome | None:
    """The :class:`Outcome` of the last patched generation in this thread/task.

    Result types stay the release's own (a ``str`` cannot carry a finish
    reason), so the reason is kept next to the call instead.
    """
    return LAST_OUTCOME.get()


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
    mx = sys.modules.get("mlx.core")
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


def finish_reason_of(last: object, items: int, max_tokens: object) -> Outcome:
    """Derive an :class:`Outcome` from the final stream item.

    0.6+ items carry ``finish_reason``; before that we compare the release's
    own token count with ``max_tokens`` (a stop token that is exactly the last
    allowed one reads as ``"length"``: the two cannot be told apart there).
    """
    if items == 0:
        return Outcome("empty", 0)
    tokens = getattr(last, "generation_tokens", None)
    count = tokens if isinstance(tokens, int) else items
    reason = getattr(last, "finish_reason", None)
    if count == 0 and max_tokens != 0:
        return Outcome("empty", 0)
    if reason in ("stop", "length"):
        return Outcome(typing.cast(FinishReason, reason), count)
    if isinstance(max_tokens, int) and count >= max_tokens:
        return Outcome("length", count)
    return Outcome("stop", count)
