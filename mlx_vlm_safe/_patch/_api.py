"""patch(), unpatch(), report(): the patch's lifecycle, under one lock.

Strictly private. The data flows one way: ``locate`` the release's objects,
``examine`` them with the probes, ``make_plan`` from the verdicts, ``install``
the plan in the registry, and ``report`` what was done. One re-entrant lock
guards every change; nothing is imported while holding it (another thread may
hold an import lock and be waiting for ours).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import sys
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from .. import _env, _hook, _releases, instrumentation
from .._log import log
from . import _memory, _mlx, _variables
from ._calls import in_flight
from ._deadlines import deadline_in_force
from ._locate import Located, locate
from ._memory._guard import last_note
from ._plan import REASONS, Plan, examine, make_plan
from ._registry import Registry
from ._report import Fix, Probe, Report, Status
from ._server_threads import arm_loaded_servers, arm_server_threads
from ._shutdown import install_shutdown_hook


class PatchError(RuntimeError):
    """``patch(strict=True)`` could not apply a fix the release needs."""


@dataclasses.dataclass
class _State:
    status: Status = "unpatched"
    armed: bool = False  # the import hook patches mlx_vlm when it loads
    located: Located | None = None
    version: str | None = None
    device: str = "unknown"
    probes: tuple[Probe, ...] = ()
    plan: Plan = dataclasses.field(default_factory=lambda: Plan(()))
    warnings: list[str] = dataclasses.field(default_factory=list)
    off: frozenset[str] = frozenset()  # fixes left out (``switched_off``)


_LOCK = threading.RLock()
_STATE = _State()
_REGISTRY = Registry()
_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """Log ``message`` once per process; keep it for the report."""
    if message not in _STATE.warnings:
        _STATE.warnings.append(message)
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning("mlx_vlm_safe: %s", message)


def _is_newer_than_known(version: str | None) -> bool:
    from packaging.version import InvalidVersion, Version

    newest = _releases.KNOWN_NEWEST

    try:
        return version is not None and Version(version) > Version(newest)
    except InvalidVersion:
        return True


def on_import(module: ModuleType) -> None:
    """Post-import hook: patch on ``mlx_vlm``, rebind copies in submodules."""
    with _LOCK:
        if _STATE.status == "patched":
            _REGISTRY.sweep(module)
            if module.__name__.startswith("mlx_vlm.server"):
                arm_server_threads(module)
        elif _STATE.armed and module.__name__ == _hook.PACKAGE:
            try:
                _apply(module, strict=False)
            except Exception as exc:  # the implicit path never raises
                _STATE.status = "failed"
                _warn_once(f"patching failed, mlx-vlm left as it is: {exc!r}")
    _start_telemetry()


def _apply(package: ModuleType, *, strict: bool) -> None:
    """Locate, probe, plan, install. Caller holds the lock."""
    located = locate(package)
    version = getattr(package, "__version__", None)
    findings = examine(located)
    if located.generate is None:
        message = (
            f"mlx-vlm {version}: generate() is not where any known release puts "
            "it; nothing was patched"
        )
        if strict:
            raise PatchError(message)
        _warn_once(message)
    elif located.kind == "unknown" or _is_newer_than_known(version):
        _warn_once(
            f"mlx-vlm {version} is newer than or unlike the releases "
            f"mlx_vlm_safe knows (up to {_releases.KNOWN_NEWEST}, layout "
            f"{located.kind}); "
            "applying the fixes its behaviour probes call for"
        )
    plan = make_plan(located, findings, _warn_once, off=_STATE.off)
    _REGISTRY.install(plan.replacements)
    install_shutdown_hook()
    arm_loaded_servers()
    _STATE.plan = plan
    _STATE.located = located
    _STATE.version = version if isinstance(version, str) else None
    _STATE.device = _mlx.device()
    _STATE.probes = findings.probes
    _STATE.status = "patched"
    _STATE.armed = False
    log.info("mlx_vlm_safe: patched mlx-vlm %s: %s", version, plan.fix_names())


def _in_flight() -> int:
    return len(in_flight())


def _waiting_for_memory() -> int:
    """Calls waiting for memory now (the ledger's queue)."""
    return _memory.ledger.waiting()


_TELEMETRY: list[bool] = []  # started (once per process)


def _start_telemetry() -> None:
    """Announce bad ``MLX_VLM_SAFE_*`` values, start the telemetry backends.

    Once the patch has applied, because every activation path (import,
    ``run``, ``patch()``, the OTel entry point) goes through it; outside the
    lock, because the backends import their packages. Once per process;
    never raises.
    """
    if _TELEMETRY or _STATE.status != "patched":
        return
    _TELEMETRY.append(True)
    _variables.register()
    _env.warn_bad_values()
    instrumentation.start(in_flight=_in_flight, waiting=_waiting_for_memory)


def _adopt_import_side_effect() -> None:
    """Adopt what ``import mlx_vlm_safe`` decided before this module loaded."""
    if _env.problem:
        _STATE.warnings.append(_env.problem)
    if _env.decided == "disabled":
        _STATE.status = "disabled"
    elif _env.decided == "pending":
        _STATE.status, _STATE.armed = "pending", True


_adopt_import_side_effect()


def activate() -> None:
    """The import side effect when mlx_vlm is already loaded. Never raises."""
    try:
        with _LOCK:
            _hook.install(on_import)
            _STATE.armed = True
        on_import(sys.modules[_hook.PACKAGE])
    except Exception as exc:  # the implicit path never raises
        _warn_once(f"activation failed, mlx-vlm left as it is: {exc!r}")


def patch(*, strict: bool = False) -> Report:
    """Apply the fixes the installed mlx-vlm needs; importing it if necessary.

    Idempotent: a second call returns the current report and changes nothing.

    Args:
        strict: raise :class:`PatchError` instead of warning when mlx-vlm is
            missing or a fix cannot be applied.

    Raises:
        ValueError: ``strict`` is not a bool, or ``MLX_VLM_SAFE_DISABLE`` has
            a value that is not a boolean.
        PatchError: with ``strict=True`` only.

    """
    if not isinstance(strict, bool):
        raise ValueError(f"strict must be True or False, got {strict!r}")
    if _env.parse_flag(_env.DISABLE):
        # The kill switch means "leave mlx-vlm as it ships": undo an earlier
        # patch and disarm the import hook, so nothing patches later either.
        with _LOCK:
            unpatch()
            _STATE.status = "disabled"
        return report(inventory=False)
    with _LOCK:
        if _STATE.status == "patched":
            return report(inventory=False)
        _hook.install(on_import)
        _STATE.armed = True
    # Import outside the lock: the hook patches as soon as mlx_vlm has loaded.
    try:
        package = importlib.import_module(_hook.PACKAGE)
    except ImportError as exc:
        with _LOCK:
            _STATE.status = "not-installed"
        if strict:
            raise PatchError(f"mlx-vlm cannot be imported: {exc}") from exc
        return report()
    with _LOCK:
        if not is_patched():  # the import hook may have patched it already
            _apply(package, strict=strict)
    _start_telemetry()
    return report(inventory=False)


def unpatch() -> Report:
    """Put back every original object we replaced, by identity. Idempotent."""
    with _LOCK:
        _REGISTRY.restore(_warn_once)
        _STATE.plan = Plan(())
        _STATE.armed = False
        if _STATE.status in ("patched", "pending", "failed"):
            _STATE.status = "unpatched"
    return report()


@contextlib.contextmanager
def switched_off(*names: str) -> Iterator[None]:
    """Test-only: the patch without the fixes ``names``, while inside.

    What the fix contract test (``tests/patch/test_fix_contract.py``) needs
    to show, on the real release, that each fix's own symptom comes back
    without it. Where the patch is in place it is re-applied on entry and on
    exit. A name that is no fix raises ``ValueError``: a typo must not pass
    for "switched off".
    """
    unknown = sorted(set(names) - set(REASONS))
    if unknown:
        raise ValueError(f"no such fix: {', '.join(unknown)}")
    with _LOCK:
        previous, _STATE.off = _STATE.off, frozenset(names)
    _repatch()
    try:
        yield
    finally:
        with _LOCK:
            _STATE.off = previous
        _repatch()


def _repatch() -> None:
    """Plan and install again, where the patch is in place."""
    if is_patched():
        unpatch()
        patch()


def release_function(name: str) -> Any:
    """The ``generate`` or ``stream_generate`` callers get now (patched if it can be).

    For the async face: it patches first (idempotent), then reads the name
    where the release's own code looks it up (the module that defines
    ``generate``), so it is the patched one. With the kill switch on, or a
    layout the patch does not know, it is the release's own, from the
    package (or ``mlx_vlm.utils`` before 0.1.15).
    """
    patch()
    located = _STATE.located
    home = None if located is None else sys.modules.get(located.home or "")
    function = getattr(home, name, None) if is_patched() else None
    if callable(function):
        return function
    package = importlib.import_module(_hook.PACKAGE)
    function = getattr(package, name, None)
    if not callable(function):  # 0.1.x: the attribute can be the CLI module
        function = getattr(importlib.import_module(_hook.PACKAGE + ".utils"), name)
    return function


def is_patched() -> bool:
    """Whether the fixes are in place now."""
    return _STATE.status == "patched"


def _fixes() -> tuple[Fix, ...]:
    """The fixes in place now, each with the ``mlx_vlm*`` attributes bound to it."""
    targets = _REGISTRY.targets()
    plan = _STATE.plan
    return tuple(
        Fix(
            name,
            REASONS[name],
            tuple(sorted(t for fix in plan.hosts(name) for t in targets.get(fix, ()))),
        )
        for name in plan.fix_names()
    )


def report(*, inventory: bool = True) -> Report:
    """A snapshot of what was found and done (see :class:`Report`).

    Args:
        inventory: also list the distributions that ship ``mlx_vlm`` and the
            stale references outside mlx-vlm. That reads every installed
            package's metadata and walks every loaded module, so ``patch()``
            returns its report without it.

    """
    from ._inventory import distributions, metadata_version, unreachable

    with _LOCK:
        state = dataclasses.replace(_STATE)
        originals = _REGISTRY.originals()
        fixes = _fixes()
        warnings = tuple(_STATE.warnings)
    located = state.located
    return Report(
        status=state.status,
        version=state.version,
        metadata_version=metadata_version(),
        distributions=distributions() if inventory else (),
        device=state.device,
        layout=located.kind if located else "unknown",
        home=located.home if located else None,
        probes=state.probes,
        fixes=fixes,
        unreachable=unreachable(originals) if inventory else (),
        warnings=warnings,
        memory=last_note(),
        deadline=deadline_in_force(),
        ledger=_memory.describe_ledger(_memory.ledger.snapshot()),
    )
