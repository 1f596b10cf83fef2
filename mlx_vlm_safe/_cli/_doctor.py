"""``mlx-vlm-safe doctor [--json] [--live]``: diagnose this environment.

Strictly private. For an operator who cannot read code: what is installed,
what the behaviour probes found on this device, what the patch does in this
process, and plain verdict lines. The exit status is the verdict, so a
deploy script can act on it:

====  ================  ====================================================
code  ``status``        meaning
====  ================  ====================================================
0     healthy           mlx-vlm generates here; nothing on its generate()
                        path needs a root-cause fix
3     affected-fixed    the release has a defect here (swallowed errors,
                        failing wired_limit, unguarded empty stream) and the
                        patch fixes it in processes where it is active
4     cannot-generate   mlx or mlx-vlm cannot load on this machine, wired_limit
                        fails and the patch is off, or ``--live`` failed
5     not-installed     mlx-vlm is not installed in this environment
6     error             affected and the patch is not in place (kill switch,
                        patch failure), or doctor itself failed
7     cache-unusable    ``--live`` could not build the tiny checkpoint: its
                        cache folder cannot be written (``MLX_VLM_SAFE_CACHE``
                        or ``XDG_CACHE_HOME`` point it elsewhere); mlx was
                        not tried
====  ================  ====================================================

(2 stays argparse's usage error.) ``--json`` prints one object with the same
content, schema ``mlx_vlm_safe.doctor/1``; every key is always present, with
``null`` where a fact is unknown:

* ``schema`` (str), ``status`` (str, above), ``exit_code`` (int)
* ``python``: ``version``, ``executable``, ``platform``
* ``packages``: distribution name -> installed version or ``null``, for
  mlx, its backends (mlx-cpu, mlx-cuda-12, mlx-cuda-13, mlx-cuda in
  earlier mlx, mlx-metal), mlx-vlm, transformers, wrapt, mlx-vlm-safe
* ``mlx``: ``importable`` (bool), ``version``, ``error``
* ``device``: ``"metal"``, ``"cuda"``, ``"cpu"`` or ``"unknown"``
* ``mlx_vlm``: ``installed``, ``importable`` (bool), ``error``, ``version``
  (its ``__version__``), ``metadata_version``, ``distributions`` (list),
  ``release`` (the known behaviour range, e.g. ``"0.3.2-0.3.10"``)
* ``layout``: ``kind`` (utils/module/package/unknown), ``home``
* ``probes``: list of ``{name, outcome, detail}``
* ``patch``: ``status`` (see ``Report.status``), ``active`` (bool),
  ``fixes`` (list of ``{name, reason, targets}``), ``unreachable`` (list),
  ``warnings`` (list)
* ``activation``: ``autopatch_variable`` (raw value of
  ``MLX_VLM_SAFE_AUTOPATCH``), ``autopatch`` (true/false, ``null`` if
  malformed), ``activated_at_start`` (bool), ``pth`` (path of the installed
  hook or ``null``), ``disable_variable`` (raw ``MLX_VLM_SAFE_DISABLE``)
* ``affected`` (bool or ``null``), ``verdicts`` (list of sentences),
  ``warnings`` (list)
* ``memory``: the memory guard: ``guard`` (``"on"``/``"off"``),
  ``limit_variable`` (raw ``MLX_VLM_SAFE_MEMORY_LIMIT``), ``budget`` (bytes a
  generation may add now, after ``margin``), ``source`` (the tightest),
  ``sources`` (room per source: ``cgroup``, ``MemAvailable``, ``RLIMIT_AS``,
  ``memory_limit``), ``margin``, ``summary``
* ``deadline``: ``timeout`` (seconds each generation may run, or ``null``),
  ``variable`` (raw ``MLX_VLM_SAFE_TIMEOUT``), ``summary``
* ``live``: ``null`` without ``--live``, else ``{ok, tokens, text,
  finish_reason, seconds, error, worker_thread_same, cache,
  cache_unusable}``: the same greedy call runs on this thread, then on a
  worker thread, and ``ok`` needs both; ``cache`` is the tiny checkpoint's
  folder, ``cache_unusable`` whether it could not be built there
* ``stats``: ``null`` without ``--live``, else ``mlx_vlm_safe.stats()`` of
  the doctor's own process after the live calls (``dataclasses.asdict``)
* ``warnings`` include every ``MLX_VLM_SAFE_*`` variable with a bad value

If doctor itself fails, the object has only ``schema``, ``status``
(``"error"``), ``exit_code`` (6) and ``error``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import json
import os
import platform
import sys
from types import ModuleType
from typing import Any, TextIO

from .. import _env, _patch, instrumentation
from .._env import AUTOPATCH
from .._log import describe
from .._patch import Probe
from ._diagnosis import (
    AFFECTED_FIXED,
    CACHE_UNUSABLE,
    CANNOT_GENERATE,
    ERROR,
    HEALTHY,
    NOT_INSTALLED,
    PACKAGES,
    PTH,
    SCHEMA,
    STATUS,
    Activation,
    Diagnosis,
    Live,
    MlxVlm,
    PatchState,
    deadline_fact,
)
from ._live import live_generation


def _packages() -> dict[str, str | None]:
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _activation() -> Activation:
    import site

    raw = os.environ.get(AUTOPATCH)
    try:
        wanted: bool | None = _env.parse_flag(AUTOPATCH)
    except ValueError:
        wanted = None
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    pth = next(
        (os.path.join(d, PTH) for d in dirs if os.path.isfile(os.path.join(d, PTH))),
        None,
    )
    boot = sys.modules.get("_mlx_vlm_safe_autopatch")
    return Activation(
        autopatch_variable=raw,
        autopatch=wanted,
        activated_at_start=bool(getattr(boot, "activated", False)),
        pth=pth,
        disable_variable=os.environ.get(_env.DISABLE),
    )


def _mlx() -> tuple[dict[str, Any], str]:
    """Whether mlx's core loads here (plain ``mlx`` on Linux does not), and where."""
    try:
        mx = importlib.import_module("mlx.core")
    except Exception as exc:  # a missing libmlx.so is an ImportError or OSError
        return {
            "importable": False,
            "version": None,
            "error": describe(exc),
        }, "unknown"
    version = getattr(mx, "__version__", None)
    return {"importable": True, "version": version, "error": None}, _patch.device()


def _patch_state(
    mlx_vlm: ModuleType,
) -> tuple[PatchState, tuple[Probe, ...], dict[str, str | None]]:
    """The patch's own report; our own probes when the patch did not run."""
    with contextlib.suppress(ValueError):  # a malformed kill switch: reported below
        _patch.patch()
    report = _patch.report()
    state = PatchState(
        status=report.status,
        active=report.active,
        fixes=report.fixes,
        unreachable=report.unreachable,
        warnings=report.warnings,
    )
    probes, layout = report.probes, {"kind": report.layout, "home": report.home}
    if not probes:
        located = _patch.locate(mlx_vlm)
        found = _patch.examine(located).probes
        probes, layout = found, {"kind": located.kind, "home": located.home}
    return state, probes, layout


@dataclasses.dataclass
class _Findings:
    """What ``collect`` has found so far; frozen into a ``Diagnosis`` at the end."""

    found: MlxVlm
    patch: PatchState = dataclasses.field(
        default_factory=lambda: PatchState(status="not-installed")
    )
    probes: tuple[Probe, ...] = ()
    layout: dict[str, str | None] = dataclasses.field(
        default_factory=lambda: {"kind": "unknown", "home": None}
    )
    live: Live | None = None
    verdicts: list[str] = dataclasses.field(default_factory=list)


def _elsewhere(a: Activation) -> str:
    """Whether *other* Python processes of this environment get the patch."""
    if a.autopatch and a.pth:
        return (
            f"Other Python processes of this environment: patched at start-up "
            f"({AUTOPATCH} is set and the .pth hook is installed)."
        )
    how = "start them with mlx-vlm-safe run"
    how = f"set {AUTOPATCH}=1 or {how}" if a.pth else how
    return (
        "Other Python processes of this environment: patched only if they "
        f"import mlx_vlm_safe; to patch them without code changes, {how}."
    )


def _unusable_cache(live: Live) -> str:
    """Why ``--live`` generated nothing, when the cache folder is to blame."""
    return (
        f"The live check could not run: the tiny checkpoint's cache folder "
        f"{live.cache} is unusable ({live.error}). This says nothing about mlx "
        "or mlx-vlm. Point it at a writable folder and run doctor --live again: "
        "MLX_VLM_SAFE_CACHE=/tmp/mlx_vlm_safe (or XDG_CACHE_HOME=/tmp/cache; "
        "the default is ~/.cache/mlx_vlm_safe)."
    )


def _exit_code(f: _Findings, mlx: dict[str, Any], needed: set[str]) -> int:
    if not f.found.installed:
        return NOT_INSTALLED
    live_failed = f.live is not None and not f.live.ok and not f.live.cache_unusable
    if not (f.found.importable and mlx["importable"]) or live_failed:
        return CANNOT_GENERATE
    applied = {fix.name for fix in f.patch.fixes} if f.patch.active else set()
    missing = needed - applied
    if "generate_off_metal" in missing:  # wired_limit fails: nothing generates
        return CANNOT_GENERATE
    if missing:
        return ERROR
    if f.live and f.live.cache_unusable:
        # A good answer the live check was asked to confirm and could not: it
        # never reached mlx, so neither "healthy" nor "cannot-generate".
        return CACHE_UNUSABLE
    return AFFECTED_FIXED if needed else HEALTHY


def _examine(live: bool) -> _Findings:
    """Import mlx-vlm, let the patch probe and patch it, optionally generate."""
    if importlib.util.find_spec("mlx_vlm") is None:
        return _Findings(
            MlxVlm(installed=False),
            verdicts=[
                f"mlx-vlm is not installed for {sys.executable}: nothing to patch. "
                "mlx_vlm_safe does not bring it along; on Linux: pip install "
                'mlx-vlm "mlx[cpu]".'
            ],
        )
    try:
        module = importlib.import_module("mlx_vlm")
    except Exception as exc:
        error = describe(exc)
        return _Findings(
            MlxVlm(
                installed=True, error=error, metadata_version=_patch.metadata_version()
            ),
            verdicts=[f"mlx-vlm is installed but cannot be imported here: {error}"],
        )
    from .._releases import release_for  # needs packaging: not before mlx-vlm

    version = getattr(module, "__version__", None)
    version = version if isinstance(version, str) else None
    row = release_for(version)
    findings = _Findings(
        MlxVlm(
            installed=True,
            importable=True,
            version=version,
            metadata_version=_patch.metadata_version(),
            distributions=_patch.distributions(),
            release=f"{row.first}-{row.last}" if row else None,
        )
    )
    findings.patch, findings.probes, findings.layout = _patch_state(module)
    if live:
        findings.live = live_generation(module, findings.layout["home"])
    return findings


def collect(*, live: bool = False) -> Diagnosis:
    """Gather every fact and verdict; imports mlx-vlm (and patches it)."""
    python = {
        "version": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
    }
    packages, activation = _packages(), _activation()
    mlx, device = _mlx()
    f = _examine(live)
    verdicts, warnings = f.verdicts, list[str]()
    if mlx["error"] and packages["mlx"] is not None:
        verdicts.append(
            f"mlx cannot run on this machine ({mlx['error']}). On Linux install "
            '"mlx[cpu]" or "mlx[cuda]": plain mlx has no Linux backend.'
        )
    outcomes = {p.name: p.outcome for p in f.probes}
    needed: set[str] = set()
    if f.found.importable:
        from . import _verdicts  # needs packaging: only once mlx-vlm is there

        needed = _verdicts.needed(outcomes)
        applied = {fix.name for fix in f.patch.fixes}
        details = {p.name: p.detail for p in f.probes}
        verdicts += _verdicts.affected(device, f.found.version, outcomes, details)
        verdicts.append(_verdicts.fixed_here(f.patch.status, needed, applied))
        verdicts += [_verdicts.pinning(), _verdicts.upstream(f.found.version)]
        warnings += _verdicts.version_warnings(
            f.found.version, f.found.metadata_version, f.found.distributions
        )
        verdicts.append(_elsewhere(activation))
    if f.live is not None and f.live.cache_unusable:
        verdicts.append(_unusable_cache(f.live))
    if activation.autopatch_variable is not None and activation.autopatch is None:
        warnings.append(
            f"{AUTOPATCH}={activation.autopatch_variable!r} is not a boolean: "
            "ignored, nothing is activated at start-up."
        )
    code = _exit_code(f, mlx, needed)
    return Diagnosis(
        schema=SCHEMA,
        status=STATUS[code],
        exit_code=code,
        python=python,
        packages=packages,
        mlx=mlx,
        device=device,
        mlx_vlm=f.found,
        layout=f.layout,
        probes=f.probes,
        patch=f.patch,
        activation=activation,
        affected=bool(needed) if f.probes else None,
        verdicts=tuple(verdicts),
        warnings=tuple(warnings + list(_env.bad_values()) + list(f.patch.warnings)),
        live=f.live,
        memory=_patch.memory_snapshot(),
        stats=dataclasses.asdict(instrumentation.stats()) if live else None,
        deadline=deadline_fact(),
    )


def run(*, as_json: bool = False, live: bool = False, out: TextIO | None = None) -> int:
    """Diagnose, print, and return the exit status. Never raises (but Ctrl-C)."""
    stream = sys.stdout if out is None else out
    try:
        # mlx-vlm and transformers print on import; keep stdout for the answer.
        with contextlib.redirect_stdout(sys.stderr):
            diagnosis = collect(live=live)
    except Exception as exc:  # the doctor must not die of the disease
        message = f"doctor failed: {describe(exc)}"
        if as_json:
            failure = {"schema": SCHEMA, "status": "error", "exit_code": ERROR}
            stream.write(json.dumps({**failure, "error": message}) + "\n")
        else:
            stream.write(f"mlx-vlm-safe {message}\nstatus: error (exit {ERROR})\n")
        return ERROR
    if as_json:
        stream.write(json.dumps(dataclasses.asdict(diagnosis), indent=2) + "\n")
    else:
        from ._render import render

        stream.write(render(diagnosis))
    return diagnosis.exit_code
