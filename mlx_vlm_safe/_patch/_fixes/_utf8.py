"""Model output that is not valid UTF-8: a replacement character, not a crash.

Strictly private. Byte-level BPE models (Qwen, GLM-OCR, InternVL and most
others) emit text as bytes, and nothing makes a model's bytes valid UTF-8:
a split emoji or CJK character, an OCR crop, or a sampled byte token will do.
mlx-vlm up to 0.6.8 decodes the streaming detokenizer's pending bytes
strictly in ``add_token`` (up to 0.3.5 in ``finalize`` too), so the whole
generation dies with ``UnicodeDecodeError`` (mlx-vlm issues #463, #834, #837,
#1771). 0.6.9 decodes them with ``errors="replace"``.

Where the probe finds the strict decoder, both methods are wrapped on the
class, so detokenizers made before the patch (a loaded processor's) are
covered too. On ``UnicodeDecodeError`` the wrapper rewrites the pending bytes
to what 0.6.9 makes of them (``errors="replace"`` in ``add_token``: U+FFFD
marks the bytes lost mid-answer; ``errors="ignore"`` in ``finalize``: a
character cut by ``max_tokens`` is dropped) and runs the method again, so
the text is exactly 0.6.9's. The strict decode happens before these methods
change any state, which the probe checks on the release itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..._log import describe
from .._locate import Located, mark, unwrap
from .._report import Probe
from . import Context, FixSpec, Methods

NAME = "utf8_decode"
#: The methods that decode the pending bytes, and how 0.6.9 treats bad bytes.
ERRORS = {"add_token": "replace", "finalize": "ignore"}
#: A byte that starts no UTF-8 character, and a space-led token after it.
_LONE_BYTE, _SPACE_LED = "\u00a6", "\u0120a"  # byte 0xA6; " a"


class _Vocab:
    """The smallest tokenizer the detokenizer's constructor reads."""

    def __init__(self) -> None:
        self.vocab = {_LONE_BYTE: 0, _SPACE_LED: 1}


def probe_utf8(cls: type | None) -> Probe:
    """Whether ``cls`` (the byte-level BPE detokenizer) survives invalid UTF-8.

    Runs the release's own methods (never our wrappers) on a two-token
    vocabulary: a lone continuation byte, then a space-led token, which makes
    ``add_token`` decode the pending byte.
    """
    if cls is None:
        return Probe(NAME, "absent", "no byte-level BPE detokenizer")
    try:
        add_token, finalize = (_original(cls, m) for m in ERRORS)
        detokenizer = cls(_Vocab())
        add_token(detokenizer, 0)
        try:
            add_token(detokenizer, 1)
        except UnicodeDecodeError as exc:
            state = (detokenizer.text, detokenizer._unflushed)
            if state != ("", _LONE_BYTE):  # pragma: no cover - no release does
                return Probe(NAME, "inconclusive", "add_token changed state first")
            return Probe(NAME, "strict", describe(exc, 200))
        add_token(detokenizer, 0)
        finalize(detokenizer)
    except UnicodeDecodeError as exc:
        return Probe(NAME, "strict", describe(exc, 200))
    except Exception as exc:  # an unexpected release: say so, and leave it be
        return Probe(NAME, "inconclusive", describe(exc, 200))
    return Probe(NAME, "replaces")


def _original(cls: type, method: str) -> Callable[..., Any]:
    """The release's own ``cls.method``, under any wrapper of ours."""
    found: Callable[..., Any] = unwrap(getattr(cls, method))  # type: ignore[assignment]
    return found


def probe(located: Located) -> Probe:
    """The probe on the release's byte-level BPE detokenizer."""
    return probe_utf8(located.bpe_detokenizer)


def repair(detokenizer: object, errors: str) -> bool:
    """Rewrite the pending bytes as decoding them with ``errors`` would.

    Returns whether anything changed (if not, the error was not ours to fix).
    """
    pending = getattr(detokenizer, "_unflushed", None)
    to_byte = getattr(detokenizer, "_byte_decoder", None)
    if not isinstance(pending, str) or not isinstance(to_byte, dict):
        return False
    raw = bytes(to_byte[c] for c in pending)
    valid = raw.decode("utf-8", errors=errors).encode("utf-8")
    if valid == raw:
        return False
    to_char = {b: c for c, b in to_byte.items()}
    detokenizer._unflushed = "".join(to_char[b] for b in valid)  # type: ignore[attr-defined]
    return True


def tolerant(original: Callable[..., Any], errors: str) -> Callable[..., Any]:
    """``original`` (a detokenizer method) that repairs invalid bytes and retries."""

    def method(self: object, *args: Any, **kwargs: Any) -> Any:
        try:
            return original(self, *args, **kwargs)
        except UnicodeDecodeError:
            if not repair(self, errors):
                raise
            return original(self, *args, **kwargs)

    return mark(method, original)


def build(cls: type, context: Context) -> Methods:
    """The decoding methods ``cls`` defines itself, wrapped in place."""
    return Methods(
        cls,
        {
            m: tolerant(_original(cls, m), e)
            for m, e in ERRORS.items()
            if m in vars(cls)
        },
    )


REPLACE_INVALID_UTF8 = FixSpec(
    "replace_invalid_utf8",
    "model output that is not valid UTF-8 raised UnicodeDecodeError in the "
    "byte-level detokenizer; such bytes now become U+FFFD",
    replaces="bpe_detokenizer",
    when={NAME: frozenset({"strict"})},
    build=build,
    probe=probe,
    root_cause=True,
    fixed_upstream_in="0.6.9",
    doctor="Model output that is not valid UTF-8 (an emoji or CJK character "
    "split between tokens, an OCR crop, a sampled byte) ends the generation with "
    "UnicodeDecodeError in this release's byte-level detokenizer (mlx-vlm "
    "{fixed} replaces such bytes).",
)
