"""patch(), unpatch(), and the registry that makes them idempotent.

Strictly private. The rules, taken from wrapt's monkey-patching guide and from
what went wrong for ddtrace, OpenTelemetry and gevent users:

* Patch module globals, not just exported names: ``generate()`` looks up
  ``stream_generate`` and ``stream_generate()`` looks up ``wired_limit`` in
  their module's globals *at call time*, so replacing those globals fixes
  every caller, including one holding a reference captured before the patch.
* Rebind every by-name copy in every loaded ``mlx_vlm*`` module (mlx-vlm binds
  ``generate`` in up to eight modules), and do it again for each ``mlx_vlm*``
  module imported later (the post-import hook).
* Replace a value only if it *is* the original (identity), and reuse one
  wrapper object per original: never a wrapper around a wrapper, and never
  somebody else's wrapper touched. ``unpatch()`` puts back exactly the
  objects it replaced, where our wrapper is still the one in place.
* One re-entrant lock around every change; no imports while holding it
  (another thread may hold an import lock and be waiting for ours).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import sys
import threading
from types import ModuleType

from . import _activate, _env, _hook
from ._detokenizer import probe_detokenizer
from ._layout import Located, locate
from ._memguard import last_note
from ._probe import Probe, probe_empty_stream, probe_result_shape, probe_wired_limit
from ._report import Fix, Report, Status
from ._results import build_result
from ._threads import can_make_thread_local, probe_thread_stream, thread_local_twin
from ._wrappers import Behaviour, safe_wired_limit, wrap_generate, wrap_stream_generate

_log = logging.getLogger("mlx_vlm_safe")

#: The newest mlx-vlm release this version of mlx_vlm_safe was tested with.
KNOWN_NEWEST = "0.7.10"


class PatchError(RuntimeError):
    """``patch(strict=True)`` could not apply a fix the release needs."""


@dataclasses.dataclass
class _State:
    status: Status = "unpatched"
    armed: bool = False
    located: Located | None = None
    version: str | None = None
    device: str = "unknown"
    probes: tuple[Probe, ...] = ()
    # id(original) -> (original, replacement, fix name)
    replacements: dict[int, tuple[object, object, str]] = dataclasses.field(
        default_factory=dict
    )
    # id(replacement) -> original, to recognise copies of our wrappers
    originals: dict[int, object] = dataclasses.field(default_factory=dict)
    # (module, attribute, original, replacement) in the order they were made
    rebound: list[tuple[ModuleType, str, object, object]] = dataclasses.field(
        default_factory=list
    )
    warnings: list[str] = dataclasses.field(default_factory=list)
    # fixes carried inside another fix's replacement: (fix, host fix)
    riders: tuple[tuple[str, str], ...] = ()


_LOCK = threading.RLock()
_STATE = _State()
_WARNED: set[str] = set()
logging.getLogger("mlx_vlm_safe").addHandler(logging.NullHandler())


def _warn_once(message: str) -> None:
    """Log ``message`` once per process; keep it for the report."""
    if message not in _STATE.warnings:
        _STATE.warnings.append(message)
    if message not in _WARNED:
        _WARNED.add(message)
        _log.warning("mlx_vlm_safe: %s", message)


def _device() -> str:
    mx = sys.modules.get("mlx.core")
    for name in ("metal", "cuda"):
        backend = getattr(mx, name, None)
        available = getattr(backend, "is_available", None)
        try:
            if callable(available) and available():
                return name
        except Exception:  # a broken backend query only changes the label
            continue
    return "cpu" if mx is not None else "unknown"


def _is_newer_than_known(version: str | None) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        return version is not None and Version(version) > Version(KNOWN_NEWEST)
    except InvalidVersion:
        return True


def _sweep(module: ModuleType) -> None:
    """Rebind every attribute of ``module`` that is one of the originals.

    An attribute that already holds a replacement (a module imported after the
    patch copied it by name, ``from ..generate import generate``) is recorded
    too, so that ``unpatch()`` gives it the original back.
    """
    replacements = _STATE.replacements
    originals = _STATE.originals
    for name, value in list(vars(module).items()):
        entry = replacements.get(id(value))
        if entry is not None and entry[0] is value:
            setattr(module, name, entry[1])
            _STATE.rebound.append((module, name, value, entry[1]))
            continue
        original = originals.get(id(value))
        if original is not None and replacements[id(original)][1] is value:
            _STATE.rebound.append((module, name, original, value))


def _loaded_mlx_vlm_modules() -> list[ModuleType]:
    return [
        m
        for name, m in list(sys.modules.items())
        if _hook.is_target(name) and isinstance(m, ModuleType)
    ]


def on_import(module: ModuleType) -> None:
    """Post-import hook: patch on ``mlx_vlm``, rebind copies in submodules."""
    with _LOCK:
        if _STATE.status == "patched":
            _sweep(module)
        elif _STATE.armed and module.__name__ == _hook.PACKAGE:
            try:
                _apply(module, strict=False)
            except Exception as exc:  # the implicit path never raises
                _STATE.status = "failed"
                _warn_once(f"patching failed, mlx-vlm left as it is: {exc!r}")


def _behaviour(located: Located, probes: list[Probe]) -> Behaviour:
    empty_probe = Probe("empty_stream", "inconclusive", "no generate")
    shape, stats = "str", None
    if located.generate is not None:
        empty_probe = probe_empty_stream(located.generate)
        item = (
            build_result(located.result_class, text="x")
            if located.result_class is not None
            else "x"
        )
        shape_probe, value = probe_result_shape(located.generate, item)
        probes += [empty_probe, shape_probe]
        shape = shape_probe.outcome
        if shape == "tuple" and isinstance(value, tuple) and len(value) == 2:
            stats = value[1] if isinstance(value[1], dict) else None
        if shape == "unknown":
            shape = "result" if located.kind in ("module", "package") else "str"
            # Say what the wrappers assume, so the report is not a dead end.
            why = f"{shape_probe.detail}; " if shape_probe.detail else ""
            probes[-1] = dataclasses.replace(
                shape_probe,
                detail=f"{why}assumed {shape!r} from the {located.kind} layout",
            )
    empty_item = (
        build_result(located.result_class, text="")
        if located.result_class is not None
        else ""
    )
    detokenizer = probe_detokenizer(located.stream_generate)
    probes.append(detokenizer)
    return Behaviour(
        # An inconclusive probe keeps the guard: one empty item is harmless.
        never_empty=empty_probe.outcome != "guarded",
        shape=shape,
        result_class=located.result_class,
        stats=stats,
        empty_item=empty_item,
        default_max_tokens=located.defaults.get("max_tokens"),
        shared_detokenizer=detokenizer.outcome == "shared",
    )


def _plan(located: Located, behaviour: Behaviour, wired: Probe, thread: Probe) -> None:
    """Decide the replacements; nothing in mlx_vlm is touched yet."""
    plan = _STATE.replacements
    stream = located.generation_stream
    if thread.outcome == "bound_to_importing_thread" and stream is not None:
        if can_make_thread_local():
            twin = thread_local_twin(stream)
            plan[id(stream)] = (stream, twin, "thread_local_stream")
        else:
            _warn_once(
                "mlx-vlm's generation stream works only on the thread that "
                "imported mlx_vlm, and this mlx cannot make a per-thread stream: "
                "call generate() from that thread"
            )
    if located.wired_limit is not None and wired.outcome != "propagates":
        fix = (
            "propagate_errors" if wired.outcome == "swallows" else "generate_off_metal"
        )
        plan[id(located.wired_limit)] = (
            located.wired_limit,
            safe_wired_limit(located.wired_limit),
            fix,
        )
    # Imported here, not at module level: it brings in wrapt, and this module
    # is imported by mlx_vlm_safe.patch()'s callers before mlx_vlm may be.
    from ._integration import runners

    retry_call, retry_stream = runners(located, behaviour)
    if located.stream_generate is not None:
        fix = "never_empty_stream" if behaviour.never_empty else "observed_stream"
        stream = wrap_stream_generate(located.stream_generate, behaviour, retry_stream)
        plan[id(located.stream_generate)] = (located.stream_generate, stream, fix)
        if behaviour.shared_detokenizer:
            _STATE.riders = (("private_detokenizer", fix),)
    if located.generate is not None:
        generate = wrap_generate(located.generate, behaviour, retry_call)
        plan[id(located.generate)] = (located.generate, generate, "none_safe_generate")


_REASONS = {
    "thread_local_stream": "the generation stream was made at import and this "
    "mlx binds streams to their thread; replaced by a thread-local stream so "
    "generate() works from any thread",
    "propagate_errors": "wired_limit swallowed every exception on this device; "
    "replaced so the real error (and Ctrl-C) reaches the caller",
    "generate_off_metal": "wired_limit failed on entry on this device; replaced so "
    "generation runs off Metal",
    "never_empty_stream": "generate() dereferences the last stream item unguarded; "
    "the stream now always yields at least one item",
    "private_detokenizer": "stream_generate() fed one shared detokenizer per "
    "processor, so concurrent calls mixed each other's text; a call that "
    "overlaps another now gets its own copy",
    "observed_stream": "stream_generate() records why it ended and retries "
    "failures before its first item",
    "none_safe_generate": "generate() never returns None and retries what can "
    "succeed on retry",
}


def _fixes() -> tuple[Fix, ...]:
    """The fixes in place now, each with every ``mlx_vlm*`` attribute bound to it.

    Bindings are read from the modules, not from our log of rebinds: modules
    imported after the patch bind our replacement directly, and those count.
    """
    owners = {id(r): fix for _, r, fix in _STATE.replacements.values()}
    targets: dict[str, list[str]] = {}
    for module in _loaded_mlx_vlm_modules():
        for name, value in list(vars(module).items()):
            fix = owners.get(id(value))
            if fix is not None and _replacement_of(fix) is value:
                targets.setdefault(fix, []).append(f"{module.__name__}.{name}")
    applied = [fix for _, _, fix in _STATE.replacements.values()]
    applied += [rider for rider, host in _STATE.riders if host in applied]
    hosts = dict(_STATE.riders)
    return tuple(
        Fix(fix, _REASONS[fix], tuple(sorted(targets.get(hosts.get(fix, fix), ()))))
        for fix in applied
    )


def _replacement_of(fix: str) -> object:
    return next(r for _, r, f in _STATE.replacements.values() if f == fix)


def _apply(package: ModuleType, *, strict: bool) -> None:
    """Probe, plan, and rebind. Caller holds the lock."""
    located = locate(package)
    version = getattr(package, "__version__", None)
    wired = probe_wired_limit(located.wired_limit)
    thread = probe_thread_stream(located.generation_stream)
    probes = [wired, thread]
    behaviour = _behaviour(located, probes)
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
            f"mlx_vlm_safe knows (up to {KNOWN_NEWEST}, layout {located.kind}); "
            "applying the fixes its behaviour probes call for"
        )
    _STATE.replacements.clear()
    _STATE.rebound.clear()
    _STATE.riders = ()
    _plan(located, behaviour, wired, thread)
    _STATE.originals = {id(r): o for o, r, _ in _STATE.replacements.values()}
    for module in _loaded_mlx_vlm_modules():
        _sweep(module)
    _STATE.located = located
    _STATE.version = version if isinstance(version, str) else None
    _STATE.device = _device()
    _STATE.probes = tuple(probes)
    _STATE.status = "patched"
    _STATE.armed = False
    names = [fix for _, _, fix in _STATE.replacements.values()]
    names += dict(_STATE.riders)  # the riders' names
    _log.info("mlx_vlm_safe: patched mlx-vlm %s: %s", version, names)


def _sync_with_import_side_effect() -> None:
    """Adopt what ``import mlx_vlm_safe`` decided before this module loaded."""
    if _activate.env_problem:
        _STATE.warnings.append(_activate.env_problem)
    if _activate.status == "disabled":
        _STATE.status = "disabled"
    elif _activate.status == "pending":
        _STATE.status, _STATE.armed = "pending", True


_sync_with_import_side_effect()


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
    return report(inventory=False)


def unpatch() -> Report:
    """Put back every original object we replaced, by identity. Idempotent."""
    with _LOCK:
        for module, name, original, replacement in reversed(_STATE.rebound):
            if vars(module).get(name) is replacement:
                setattr(module, name, original)
            else:
                _warn_once(
                    f"{module.__name__}.{name} was replaced by someone else after "
                    "the patch; left as it is"
                )
        _STATE.rebound.clear()
        _STATE.replacements.clear()
        _STATE.originals.clear()
        _STATE.riders = ()
        _STATE.armed = False
        if _STATE.status in ("patched", "pending", "failed"):
            _STATE.status = "unpatched"
    return report()


def is_patched() -> bool:
    """Whether the fixes are in place now."""
    return _STATE.status == "patched"


def report(*, inventory: bool = True) -> Report:
    """A snapshot of what was found and done (see :class:`Report`).

    Args:
        inventory: also list the distributions that ship ``mlx_vlm`` and the
            stale references outside mlx-vlm. That reads every installed
            package's metadata and walks every loaded module (~100 ms), so
            ``patch()`` returns its report without it.

    """
    from ._inventory import distributions, metadata_version, unreachable

    with _LOCK:
        state = dataclasses.replace(_STATE)
        originals = [entry[0] for entry in _STATE.replacements.values()]
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
    )
