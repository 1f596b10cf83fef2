"""One module per fix: the probe verdict it needs, what it replaces, and why.

Strictly private. Each fix module defines its probe (where the fix has one of
its own) and a :class:`FixSpec`; ``_patch._plan.FIXES`` lists them in the
order they are applied and reported, and their probes run in that order.
Adding a fix is one module here, one entry in that list and the release
table's data (``_releases``): ``report()``, ``doctor``, the README table and
the tests' expectations are read from the spec.
This ``__init__`` imports no fix module, so a fix module may import the
wrappers without an import cycle.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .._behaviour import Behaviour
from .._locate import Located
from .._report import Probe

#: Build a replacement for ``original`` (or, for a class, its :class:`Methods`);
#: ``None`` when it cannot be built here (the builder has said why through
#: ``Context.warn``).
Builder = Callable[[Any, "Context"], object]
#: A fix's own probe, run on the located objects (``_locate.Located``).
ProbeRunner = Callable[[Located], Probe]
#: A stream layer: the release's ``stream_generate`` (or what wraps it) in,
#: the same call with the fix around it out.
StreamLayer = Callable[[Callable[..., Iterator[Any]]], Callable[..., Iterator[Any]]]


@dataclasses.dataclass(frozen=True)
class Context:
    """What a builder may use: the release's facts and the retry runners."""

    located: Located
    behaviour: Behaviour
    retry_call: Callable[..., Any] | None
    retry_stream: Callable[..., Any] | None
    warn: Callable[[str], None]
    #: The stream layers of the fixes that apply, in ``FIXES`` order:
    #: ``(layer, inner)`` (see ``FixSpec.layer``).
    layers: tuple[tuple[StreamLayer, bool], ...] = ()

    def stream_layers(self, *, inner: bool) -> tuple[StreamLayer, ...]:
        """The inner (or outer) stream layers, first listed innermost."""
        return tuple(layer for layer, is_inner in self.layers if is_inner is inner)


@dataclasses.dataclass(frozen=True)
class Methods:
    """A builder's answer for a class: methods replaced in place on it.

    Replacing the class itself would miss the instances made before the
    patch (a loaded processor's detokenizer); replacing its methods does not.
    """

    owner: type
    #: method name -> its replacement (marked, ``__wrapped__`` is the original)
    replacements: Mapping[str, Callable[..., Any]]


def stream_error(device: str) -> str:
    """Mlx's error for a stream used off its thread, on ``device``'s kind."""
    kind = "cpu" if device == "cpu" else "gpu"
    return f"RuntimeError: There is no Stream({kind}, …) in current thread"


@dataclasses.dataclass(frozen=True)
class FixSpec:
    """One fix: when it applies, what it replaces, how, and why.

    Everything a fix means lives here, so that a new fix is its module, one
    ``FIXES`` entry and the release table's data: ``report()``, ``doctor``,
    the README table and the tests' expectations are all read from the spec.

    ``probe`` is the fix's own probe, if it has one (the generate path's
    ``empty_stream`` and ``result_shape`` run for every release). ``when``
    maps probe names to the verdicts that call for the fix (all must hold;
    empty means always). ``replaces`` names the ``Located`` field whose
    object is replaced. A fix's ``layer`` is composed by the
    ``stream_generate`` wrapper, around each step of mlx's work inside the
    memory guard when ``inner``, around the whole call outside it otherwise
    (``report()`` lists it with that wrapper's targets); it may come with a
    replacement of its own too (of something the release's stream calls,
    which the layer prepares per call), listed beside them. ``root_cause``
    fixes are the ones ``doctor`` counts as "this release is affected
    here". ``fixed_upstream_in`` is the mlx-vlm release that fixed the
    defect upstream, if one did. ``doctor`` is the sentence ``doctor``
    prints when the probes find the defect (``{where}``: "mlx-vlm
    <version> on <device>"; ``{fixed}``: ``fixed_upstream_in``).
    """

    name: str
    reason: str
    replaces: str = ""
    when: Mapping[str, frozenset[str]] = dataclasses.field(default_factory=dict)
    build: Builder | None = None
    probe: ProbeRunner | None = None
    root_cause: bool = False
    layer: StreamLayer | None = None
    inner: bool = False
    fixed_upstream_in: str | None = None
    doctor: str = ""

    def applies(self, verdicts: Mapping[str, str]) -> bool:
        """Whether the probes' ``verdicts`` call for this fix."""
        return all(verdicts.get(probe) in wanted for probe, wanted in self.when.items())

    def found(self, verdicts: Mapping[str, str]) -> bool:
        """Whether the probes found the defect for certain (not "inconclusive")."""
        return self.applies(verdicts) and "inconclusive" not in (
            verdicts.get(p) for p in self.when
        )

    def diagnosed(self, verdicts: Mapping[str, str]) -> bool:
        """A root cause the probes found for certain."""
        return self.root_cause and self.found(verdicts)

    def sentence(self, where: str, **facts: str) -> str:
        """``doctor``'s sentence, filled in for ``where`` ("mlx-vlm X on cpu").

        ``facts`` fill the sentence's other fields (the thread fix quotes the
        ``stream`` error its probe saw on this device).
        """
        facts.setdefault("stream", stream_error("cpu"))
        return self.doctor.format(where=where, fixed=self.fixed_upstream_in, **facts)
