"""Behaviour probes: ask the loaded code what it does, not what version it is.

Strictly private. Version numbers lie (forks reuse the ``mlx_vlm`` import name,
co-installs overwrite files under another distribution's metadata) and the
defect depends on the device as well as the release. So we run the real
objects on harmless inputs:

* ``wired_limit``: raise a private exception inside it and see whether it
  propagates, is swallowed (0.3.2-0.3.10 off Metal), or whether the context
  manager fails on entry (0.1.22-0.3.1 off Metal).
* ``generate``: run a *clone* of the real function whose private globals hold
  a fake ``stream_generate``. The clone shares the real code object, so it
  behaves exactly like the release, but no other thread can ever see the fake:
  nothing in ``mlx_vlm`` is mutated while probing.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Iterator
from typing import Any, Literal

WiredOutcome = Literal["propagates", "swallows", "fails_on_entry", "absent"]
GuardOutcome = Literal["guarded", "unguarded", "inconclusive"]
Shape = Literal["str", "tuple", "result", "unknown"]


class _ProbeSignal(Exception):
    """Raised inside ``wired_limit``; nobody else can raise or catch it."""


@dataclasses.dataclass(frozen=True)
class Probe:
    """One probe's verdict and, where it failed, the error it saw."""

    name: str
    outcome: str
    detail: str = ""


def probe_wired_limit(wired_limit: Callable[..., Any] | None) -> Probe:
    """Classify ``wired_limit`` on this device by what it does with an error."""
    if wired_limit is None:
        return Probe("wired_limit", "absent", "the release has no wired_limit")
    try:
        with wired_limit(None, []):
            raise _ProbeSignal
    except _ProbeSignal:
        return Probe("wired_limit", "propagates")
    except Exception as exc:  # failing on entry is a result, not a crash
        return Probe("wired_limit", "fails_on_entry", describe(exc))
    return Probe("wired_limit", "swallows", "an exception raised inside vanished")


class _Criteria:
    def reset(self, *args: object) -> None:
        """Upstream resets the EOS ids before each call."""

    def add_eos_token_ids(self, *args: object) -> None:
        """Upstream adds caller EOS ids."""

    def __call__(self, *args: object) -> bool:
        return False


class _Tokenizer:
    stopping_criteria = _Criteria()


class _Processor:
    tokenizer = _Tokenizer()


class _Config:
    eos_token_id = (1,)
    model_type = "mlx_vlm_safe_probe"


class _Model:
    config = _Config()


def _clone(fn: Callable[..., Any], **globals_: object) -> Callable[..., Any]:
    """A copy of ``fn`` that resolves some globals privately."""
    code = fn.__code__
    scope = {**fn.__globals__, **globals_}
    clone = types.FunctionType(
        code,
        scope,
        fn.__name__,
        fn.__defaults__,
        fn.__closure__,
    )
    clone.__kwdefaults__ = fn.__kwdefaults__
    return clone


def _run_with_stream(generate: Callable[..., Any], items: tuple[object, ...]) -> object:
    def fake_stream(*args: object, **kwargs: object) -> Iterator[object]:
        yield from items

    clone = _clone(generate, stream_generate=fake_stream)
    return clone(_Model(), _Processor(), "", verbose=False)


def probe_empty_stream(generate: Callable[..., Any]) -> Probe:
    """Check whether ``generate`` survives a stream that yields nothing."""
    try:
        _run_with_stream(generate, ())
    except AttributeError as exc:
        if "NoneType" in str(exc):
            return Probe("empty_stream", "unguarded", describe(exc))
        return Probe("empty_stream", "inconclusive", describe(exc))
    except Exception as exc:  # an unexpected release: say so, decide elsewhere
        return Probe("empty_stream", "inconclusive", describe(exc))
    return Probe("empty_stream", "guarded")


def probe_result_shape(
    generate: Callable[..., Any], item: object
) -> tuple[Probe, object]:
    """What does ``generate`` return for a one-item stream? Returns the value too."""
    try:
        value = _run_with_stream(generate, (item,))
    except Exception as exc:  # an unexpected release: say so, decide elsewhere
        return Probe("result_shape", "unknown", describe(exc)), None
    shape: Shape
    if isinstance(value, str):
        shape = "str"
    elif isinstance(value, tuple):
        shape = "tuple"
    elif dataclasses.is_dataclass(value):
        shape = "result"
    else:
        shape = "unknown"
    return Probe("result_shape", shape), value


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]
