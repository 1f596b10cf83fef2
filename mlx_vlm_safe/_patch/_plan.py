"""Decide the replacements from the probes' verdicts; nothing is touched yet.

Strictly private. :data:`FIXES` is the one list of fixes, in the order they are
applied and reported; each entry is a ``FixSpec`` from its own module under
``_fixes`` (see there for how to add one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

from ._fixes import Context, FixSpec, Methods
from ._fixes._caller_kwargs import PASS_CALLER_KWARGS
from ._fixes._detokenizer import PRIVATE_DETOKENIZER
from ._fixes._generation import NEVER_EMPTY_STREAM, NONE_SAFE_GENERATE, OBSERVED_STREAM
from ._fixes._shared_stream import SERIALIZED_STEPS
from ._fixes._thread_stream import THREAD_LOCAL_STREAM
from ._fixes._utf8 import REPLACE_INVALID_UTF8
from ._fixes._wired_limit import GENERATE_OFF_METAL, PROPAGATE_ERRORS
from ._locate import Located
from ._probes import Findings, run_probes
from ._retry_wiring import runners

#: The ``Located`` field whose wrapper composes the fixes' stream layers.
STREAM_GENERATE = "stream_generate"

FIXES: tuple[FixSpec, ...] = (
    THREAD_LOCAL_STREAM,
    PROPAGATE_ERRORS,
    GENERATE_OFF_METAL,
    NEVER_EMPTY_STREAM,
    OBSERVED_STREAM,
    NONE_SAFE_GENERATE,
    REPLACE_INVALID_UTF8,
    PRIVATE_DETOKENIZER,
    SERIALIZED_STEPS,
    PASS_CALLER_KWARGS,
)
REASONS = {spec.name: spec.reason for spec in FIXES}
#: The fixes' own probes, each once, in the order of FIXES.
FIX_PROBES = tuple(
    dict.fromkeys(spec.probe for spec in FIXES if spec.probe is not None)
)


class Replacement(NamedTuple):
    """One original object and what replaces it, for which fix."""

    original: object
    replacement: object
    fix: str
    #: Classes whose attributes hold ``original`` (a method replaced in place),
    #: swept beside the loaded modules.
    owners: tuple[type, ...] = ()


def examine(located: Located) -> Findings:
    """Every probe's verdict on the located objects (``report()``'s order)."""
    return run_probes(located, FIX_PROBES)


@dataclasses.dataclass(frozen=True)
class Plan:
    """The replacements to make, and the fixes layered inside one of them."""

    replacements: tuple[Replacement, ...]
    #: The fixes whose stream layer the ``stream_generate`` wrapper composes.
    layered: tuple[str, ...] = ()
    #: The fix whose replacement of ``stream_generate`` carries those layers.
    stream_host: str = ""

    def fix_names(self) -> list[str]:
        """Every fix in the plan, in ``FIXES`` order."""
        names = {r.fix for r in self.replacements}.union(self.layered)
        return [spec.name for spec in FIXES if spec.name in names]

    def hosts(self, fix: str) -> tuple[str, ...]:
        """The fixes whose replacements show where ``fix`` acts.

        Itself (where it replaces something), and the ``stream_generate``
        wrapper's fix where its layer runs inside that wrapper.
        """
        return (fix, self.stream_host) if fix in self.layered else (fix,)


def make_plan(
    located: Located,
    findings: Findings,
    warn: Callable[[str], None],
    *,
    off: frozenset[str] = frozenset(),
) -> Plan:
    """The replacements the probes call for, built but not installed.

    ``off``: fixes to leave out even where the probes call for them (the
    tests' ``switched_off``).
    """
    verdicts = findings.verdicts()
    chosen = [spec for spec in FIXES if spec.name not in off]
    retry_call, retry_stream = runners(located, findings.behaviour)
    layers_named = [
        (spec.name, (spec.layer, spec.inner))
        for spec in chosen
        if spec.layer is not None and spec.applies(verdicts)
    ]
    layers = tuple(layer for _, layer in layers_named)
    context = Context(
        located, findings.behaviour, retry_call, retry_stream, warn, layers
    )
    replacements: list[Replacement] = []
    hosts: dict[str, str] = {}  # Located field -> the fix that replaced it
    for spec in chosen:
        if spec.build is None or not spec.applies(verdicts):
            continue
        original = getattr(located, spec.replaces)
        if original is None:
            continue
        replacement = spec.build(original, context)
        if isinstance(replacement, Methods):
            owner = replacement.owner
            replacements += [
                Replacement(vars(owner)[name], method, spec.name, (owner,))
                for name, method in replacement.replacements.items()
            ]
        elif replacement is not None:
            replacements.append(Replacement(original, replacement, spec.name))
            hosts[spec.replaces] = spec.name
    # A layer takes effect only inside the stream_generate wrapper.
    host = hosts.get(STREAM_GENERATE, "")
    layered = tuple(name for name, _ in layers_named) if host else ()
    return Plan(tuple(replacements), layered, host)
