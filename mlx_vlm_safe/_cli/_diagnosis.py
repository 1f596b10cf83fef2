"""What ``mlx-vlm-safe doctor`` finds, as values: the JSON schema and exit codes.

Strictly private. ``_doctor`` fills a :class:`Diagnosis`; ``_render`` prints
it as text, ``dataclasses.asdict`` as JSON. Both forms are views of the same
value, so they cannot drift. The schema is described in ``_doctor``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from .. import _patch
from .._patch import Fix, Probe

SCHEMA = "mlx_vlm_safe.doctor/1"

HEALTHY = 0
AFFECTED_FIXED = 3
CANNOT_GENERATE = 4
NOT_INSTALLED = 5
ERROR = 6
CACHE_UNUSABLE = 7
STATUS = {
    HEALTHY: "healthy",
    AFFECTED_FIXED: "affected-fixed",
    CANNOT_GENERATE: "cannot-generate",
    NOT_INSTALLED: "not-installed",
    ERROR: "error",
    CACHE_UNUSABLE: "cache-unusable",
}

#: mlx's backend distributions, which ``mlx[cpu]``, ``mlx[cuda]`` (or
#: ``[cuda12]``/``[cuda13]``) and macOS bring along: the CUDA one is named after
#: the CUDA major version in recent mlx releases (0.32.4 here), plain
#: ``mlx-cuda`` in the first ones with a CUDA backend.
BACKENDS = ("mlx-cpu", "mlx-cuda-12", "mlx-cuda-13", "mlx-cuda", "mlx-metal")
PACKAGES = (
    "mlx",
    *BACKENDS,
    "mlx-vlm",
    "transformers",
    "wrapt",
    "mlx-vlm-safe",
)
PTH = "mlx_vlm_safe_autopatch.pth"
LIVE_TOKENS = 8


@dataclasses.dataclass(frozen=True)
class MlxVlm:
    """mlx-vlm as found: installed, importable, and which release it claims."""

    installed: bool
    importable: bool = False
    error: str | None = None
    version: str | None = None
    metadata_version: str | None = None
    distributions: tuple[str, ...] = ()
    release: str | None = None


@dataclasses.dataclass(frozen=True)
class PatchState:
    """What the patch does in this (the doctor's) process."""

    status: str
    active: bool = False
    fixes: tuple[Fix, ...] = ()
    unreachable: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Activation:
    """How the patch gets into *other* processes of this environment."""

    autopatch_variable: str | None
    autopatch: bool | None
    activated_at_start: bool
    pth: str | None
    disable_variable: str | None


@dataclasses.dataclass(frozen=True)
class Live:
    """One real generation on the built-in tiny checkpoint."""

    ok: bool
    tokens: int | None = None
    text: str = ""
    finish_reason: str | None = None
    seconds: float = 0.0
    error: str | None = None
    #: The same call on a new worker thread: ``None`` if it was not reached,
    #: else whether it gave the main thread's answer (``error`` says why not).
    worker_thread_same: bool | None = None
    #: The folder the tiny checkpoint is built in and read from.
    cache: str | None = None
    #: The checkpoint could not be built there (a read-only ``HOME`` in a
    #: container...): nothing was generated, and nothing is known of mlx.
    cache_unusable: bool = False


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """Everything ``doctor`` prints; ``dataclasses.asdict`` is the JSON."""

    schema: str
    status: str
    exit_code: int
    python: dict[str, str]
    packages: dict[str, str | None]
    mlx: dict[str, Any]
    device: str
    mlx_vlm: MlxVlm
    layout: dict[str, str | None]
    probes: tuple[Probe, ...]
    patch: PatchState
    activation: Activation
    affected: bool | None
    verdicts: tuple[str, ...]
    warnings: tuple[str, ...]
    live: Live | None
    memory: dict[str, Any] | None = None  # the memory guard's budget (_budget)
    stats: dict[str, Any] | None = None  # this process's calls (with --live)
    #: The time limit a generation gets: ``timeout`` (seconds or ``None``),
    #: ``variable`` (raw ``MLX_VLM_SAFE_TIMEOUT``), ``summary``.
    deadline: dict[str, Any] | None = None


def deadline_fact() -> dict[str, Any]:
    """The time limit a generation in this process gets (``deadline`` field)."""
    summary = _patch.deadline_in_force()
    if summary == "none":
        summary = (
            "none: a generation runs until it ends (set "
            f"{_patch.TIMEOUT_VARIABLE} or configure(timeout=))"
        )
    return {
        "timeout": _patch.LIMITS.timeout,
        "variable": os.environ.get(_patch.TIMEOUT_VARIABLE),
        "summary": summary,
    }
