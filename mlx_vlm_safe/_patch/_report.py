"""What the patch found and did, as one frozen value.

Strictly private; the types are re-exported by the package. A report is a
snapshot: ``mlx_vlm_safe.report()`` builds a new one each time, so it can be
logged, compared, attached to a bug report or printed by ``doctor``.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

Status = Literal[
    "patched",  # fixes are in place
    "pending",  # armed: mlx_vlm is not imported yet; it is patched on import
    "unpatched",  # never patched, or unpatch() was called
    "disabled",  # the kill switch is set
    "not-installed",  # mlx_vlm cannot be imported
    "failed",  # patching raised; see ``warnings``
]


@dataclasses.dataclass(frozen=True)
class Probe:
    """One behaviour probe's verdict and, where it failed, the error it saw."""

    name: str
    outcome: str
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class Fix:
    """One fix applied: what, why, and the ``module.attribute`` it replaced."""

    name: str
    reason: str
    targets: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Report:
    """What ``mlx_vlm_safe`` found in this process and what it changed.

    Attributes:
        status: see :data:`Status`.
        version: ``mlx_vlm.__version__``, the code's own word.
        metadata_version: ``importlib.metadata.version("mlx-vlm")``; ``None``
            when the code came from a fork with another distribution name.
        distributions: distributions that install the ``mlx_vlm`` package
            (more than one means a co-install: files were overwritten).
        device: ``"metal"``, ``"cuda"``, ``"cpu"`` or ``"unknown"``.
        layout: where ``generate`` lives: ``"utils"`` (0.1.x-0.2.0),
            ``"module"`` (0.3.0-0.5.0), ``"package"`` (0.6+) or ``"unknown"``.
        home: the module that defines ``generate``.
        probes: behaviour probe verdicts.
        fixes: fixes applied, with the attributes they replaced.
        unreachable: ``module.attribute`` names outside mlx-vlm that still hold
            an original function (captured before the patch). Those calls get
            the root-cause fixes but not the None-safe result or the retries.
        warnings: human-readable notes (unknown release, failed probes ...).
        memory: the memory guard's last decision: the budget and its tightest
            source, and whether the pre-flight estimate could be made for the
            last model (or why not: then only the in-flight check guards it);
            ``None`` before the first generation.
        deadline: the time limit a call made by the caller of ``report()``
            would get: ``"none"``, the configured ``timeout`` (and from where),
            or the enclosing ``deadline()`` block's.
        ledger: the memory ledger now: generations in flight and what they
            reserve, calls waiting for memory, and counts since start.

    """

    status: Status
    version: str | None = None
    metadata_version: str | None = None
    distributions: tuple[str, ...] = ()
    device: str = "unknown"
    layout: str = "unknown"
    home: str | None = None
    probes: tuple[Probe, ...] = ()
    fixes: tuple[Fix, ...] = ()
    unreachable: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    memory: str | None = None
    deadline: str = "none"
    ledger: str | None = None

    @property
    def active(self) -> bool:
        """Whether the patch is in place now."""
        return self.status == "patched"

    def probe(self, name: str) -> str | None:
        """The outcome of probe ``name``, or ``None`` if it did not run."""
        return next((p.outcome for p in self.probes if p.name == name), None)

    def fix_names(self) -> tuple[str, ...]:
        """Names of the fixes applied, in order."""
        return tuple(f.name for f in self.fixes)

    def __str__(self) -> str:
        """A readable multi-line summary; the fields themselves are the API."""
        version = self.version or "-"
        if self.metadata_version not in (None, self.version):
            version += f" (metadata: mlx-vlm {self.metadata_version})"
        lines = [
            f"mlx_vlm_safe report: {self.status}"
            + (" (active)" if self.active else ""),
            f"  mlx-vlm      {version}",
        ]
        if self.distributions:
            lines.append(f"  installed by {', '.join(self.distributions)}")
        lines.append(f"  device       {self.device}")
        lines.append(f"  layout       {self.layout} (generate in {self.home or '-'})")
        lines += [
            f"  probe        {p.name}: {p.outcome}"
            + (f" ({p.detail})" if p.detail else "")
            for p in self.probes
        ]
        for fix in self.fixes:
            lines.append(f"  fix          {fix.name}: {fix.reason}")
            lines += [f"                 replaces {t}" for t in fix.targets]
        if not self.fixes:
            lines.append("  fixes        none")
        lines += [f"  unreachable  {name}" for name in self.unreachable]
        lines += [f"  warning      {w}" for w in self.warnings]
        shown = {
            "status", "version", "metadata_version", "distributions", "device",
            "layout", "home", "probes", "fixes", "unreachable", "warnings",
        }  # fmt: skip
        lines += [  # any field added later still shows
            f"  {f.name:<12} {getattr(self, f.name)}"
            for f in dataclasses.fields(self)
            if f.name not in shown
        ]
        return "\n".join(lines)
