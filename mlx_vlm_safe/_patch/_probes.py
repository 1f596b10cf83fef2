"""Behaviour probes: ask the loaded code what it does, not what version it is.

Strictly private. Version numbers lie (forks reuse the ``mlx_vlm`` import name,
co-installs overwrite files under another distribution's metadata) and the
defects depend on the device as well as the release. So every probe runs the
real objects on harmless inputs; :func:`run_probes` runs them all, in the order
``report()`` lists them: first the fixes' own probes (each lives with its
fix, in ``_fixes``), then the two here, which decide the wrappers' shape:

* ``empty_stream``: does ``generate`` survive a stream that yields nothing?
* ``result_shape``: what does it return for a one-item stream?

Both run a *clone* of the real ``generate`` whose private globals hold a fake
``stream_generate``. The clone shares the real code object, so it behaves
exactly like the release, but no other thread can ever see the fake: nothing
in ``mlx_vlm`` is mutated while probing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

from .._log import describe
from ._behaviour import Behaviour
from ._locate import Located, with_globals
from ._report import Probe
from ._results import build_result

Shape = Literal["str", "tuple", "result", "unknown"]
EMPTY_STREAM = "empty_stream"


@dataclasses.dataclass(frozen=True)
class Findings:
    """Every probe's verdict, and the behaviour the wrappers are built for."""

    probes: tuple[Probe, ...]
    behaviour: Behaviour

    def verdicts(self) -> dict[str, str]:
        """Probe name -> outcome (what the fix specs' ``when`` reads)."""
        return {p.name: p.outcome for p in self.probes}


def run_probes(
    located: Located, fix_probes: Sequence[Callable[[Located], Probe]]
) -> Findings:
    """Run the fixes' probes, then the generate path's; derive the behaviour."""
    probes = [run(located) for run in fix_probes]
    empty = Probe(EMPTY_STREAM, "inconclusive", "no generate")
    shape, stats = "str", None
    if located.generate is not None:
        empty = probe_empty_stream(located.generate)
        item = (
            build_result(located.result_class, text="x")
            if located.result_class is not None
            else "x"
        )
        shape_probe, value = probe_result_shape(located.generate, item)
        shape = shape_probe.outcome
        if shape == "tuple" and isinstance(value, tuple) and len(value) == 2:
            stats = value[1] if isinstance(value[1], dict) else None
        if shape == "unknown":
            shape = "result" if located.kind in ("module", "package") else "str"
            # Say what the wrappers assume, so the report is not a dead end.
            why = f"{shape_probe.detail}; " if shape_probe.detail else ""
            shape_probe = dataclasses.replace(
                shape_probe,
                detail=f"{why}assumed {shape!r} from the {located.kind} layout",
            )
        probes += [empty, shape_probe]
    empty_item = (
        build_result(located.result_class, text="")
        if located.result_class is not None
        else ""
    )
    behaviour = Behaviour(
        never_empty=empty.outcome != "guarded",
        shape=shape,
        result_class=located.result_class,
        stats=stats,
        empty_item=empty_item,
        default_max_tokens=located.defaults.get("max_tokens"),
    )
    return Findings(tuple(probes), behaviour)


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


def _run_with_stream(generate: Callable[..., Any], items: tuple[object, ...]) -> object:
    def fake_stream(*args: object, **kwargs: object) -> Iterator[object]:
        yield from items

    clone = with_globals(generate, stream_generate=fake_stream)
    return clone(_Model(), _Processor(), "", verbose=False)


def probe_empty_stream(generate: Callable[..., Any]) -> Probe:
    """Check whether ``generate`` survives a stream that yields nothing."""
    try:
        _run_with_stream(generate, ())
    except AttributeError as exc:
        if "NoneType" in str(exc):
            return Probe(EMPTY_STREAM, "unguarded", describe(exc, 200))
        return Probe(EMPTY_STREAM, "inconclusive", describe(exc, 200))
    except Exception as exc:  # an unexpected release: say so, decide elsewhere
        return Probe(EMPTY_STREAM, "inconclusive", describe(exc, 200))
    return Probe(EMPTY_STREAM, "guarded")


def probe_result_shape(
    generate: Callable[..., Any], item: object
) -> tuple[Probe, object]:
    """What does ``generate`` return for a one-item stream? Returns the value too."""
    try:
        value = _run_with_stream(generate, (item,))
    except Exception as exc:  # an unexpected release: say so, decide elsewhere
        return Probe("result_shape", "unknown", describe(exc, 200)), None
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
