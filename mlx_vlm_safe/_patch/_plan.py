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
from ._fixes._detokenizer import PRIVATE_DETOKENIZER
from ._fixes._generation import NEVER_EMPTY_STREAM, NONE_SAFE_GENERATE, OBSERVED_STREAM
from ._fixes._shared_stream import SERIALIZED_STEPS
from ._fixes._thread_stream import THREAD_LOCAL_STREAM
from ._fixes._utf8 import REPLACE_INVALID_UTF8
from ._fixes._wired_limit import GENERATE_OFF_METAL, PROPAGATE_ERRORS
from ._locate import Located
from ._probes import Findings, run_probes
from ._retry_wiring import runners

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
    """The replacements to make, and the fixes carried inside one of them."""

    replacements: tuple[Replacement, ...]
    #: (fix, the fix whose replacement carries it)
    riders: tuple[tuple[str, str], ...] = ()

    def fix_names(self) -> list[str]:
        """Every fix in the plan, replacements first, then riders."""
        names = [r.fix for r in self.replacements] + [name for name, _ in self.riders]
        return list(dict.fromkeys(names))  # a fix may replace several methods


def make_plan(
    located: Located, findings: Findings, warn: Callable[[str], None]
) -> Plan:
    """The replacements the probes call for, built but not installed."""
    verdicts = findings.verdicts()
    retry_call, retry_stream = runners(located, findings.behaviour)
    layers = tuple(
        (spec.layer, spec.inner)
        for spec in FIXES
        if spec.layer is not None and spec.applies(verdicts)
    )
    context = Context(
        located, findings.behaviour, retry_call, retry_stream, warn, layers
    )
    replacements: list[Replacement] = []
    hosts: dict[str, str] = {}  # Located field -> the fix that replaced it
    for spec in FIXES:
        if spec.rides_on or spec.build is None or not spec.applies(verdicts):
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
    riders = tuple(
        (spec.name, hosts[spec.rides_on])
        for spec in FIXES
        if spec.rides_on in hosts and spec.applies(verdicts)
    )
    return Plan(tuple(replacements), riders)
