"""The mlx-vlm patch: locate -> probe -> plan -> install -> report.

Strictly private; the package re-exports the public names. Nothing here
imports mlx or mlx-vlm: the patch works on whatever ``mlx_vlm`` is loaded
(the import hook calls :func:`on_import`), and the retry engine it uses
(``_retry``) knows nothing about mlx-vlm.

* ``_locate``: find the release's real ``generate``, ``stream_generate``,
  ``wired_limit`` and generation stream, whatever the layout.
* ``_probes``: run each probe on those objects (the verdicts).
* ``_plan``: the list of fixes (``FIXES``, one module each under ``_fixes``)
  and the replacements the verdicts call for.
* ``_registry``: install and restore replacements by identity.
* ``_api``: ``patch()``, ``unpatch()``, ``report()`` under one lock.
* ``_wrappers``, ``_results``, ``_retry_wiring``, ``_memory``,
  ``_thread_exit``, ``_calls``: what runs on every call.
* ``_deadlines`` (time limits, cancel handles), ``_shutdown``
  (``cancel_all()``, the exit): what stops a call early.

A module imports only its own stage or an earlier one, in the order
``_locate``, the per-call modules, ``_probes``, ``_fixes``, ``_plan``,
``_registry``, ``_api`` (``PATCH_STAGES`` in ``tests/test_layout.py``).
``switched_off`` is for the tests: the patch without some fixes.
"""

from typing import TYPE_CHECKING, Any

from ._api import (
    PatchError,
    activate,
    is_patched,
    on_import,
    patch,
    release_function,
    report,
    switched_off,
    unpatch,
)
from ._calls import GenerationCancelled
from ._deadlines import (
    DEADLINE_SETTINGS,
    LIMITS,
    SCOPE,
    TIMEOUT_VARIABLE,
    Canceller,
    Scope,
    checked_timeout,
    deadline,
    deadline_in_force,
    reset_timeout,
    set_timeout,
)
from ._fixes import stream_error
from ._inventory import distributions, metadata_version
from ._locate import locate
from ._memory import snapshot as memory_snapshot
from ._mlx import device
from ._plan import FIXES, examine
from ._report import Fix, Probe, Report
from ._results import Outcome, last_outcome, text_of
from ._shutdown import cancel_all
from ._thread_exit import arm_thread_exit

if TYPE_CHECKING:
    from .._retry import Retry

    #: The public ``@retry``: the engine's, told what ``_retry_rules`` knows.
    retry: Retry

__all__ = [
    "DEADLINE_SETTINGS",
    "FIXES",
    "LIMITS",
    "SCOPE",
    "TIMEOUT_VARIABLE",
    "Canceller",
    "Fix",
    "GenerationCancelled",
    "Outcome",
    "PatchError",
    "Probe",
    "Report",
    "Scope",
    "activate",
    "arm_thread_exit",
    "cancel_all",
    "checked_timeout",
    "deadline",
    "deadline_in_force",
    "device",
    "distributions",
    "examine",
    "is_patched",
    "last_outcome",
    "locate",
    "memory_snapshot",
    "metadata_version",
    "on_import",
    "patch",
    "release_function",
    "report",
    "reset_timeout",
    "retry",
    "set_timeout",
    "stream_error",
    "switched_off",
    "text_of",
    "unpatch",
]


def __getattr__(name: str) -> Any:
    """``retry``, made on first use: the decorator imports wrapt, the patch not."""
    if name != "retry":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .._retry import retry_with
    from ._retry_rules import ABOUT, LADDER, RULES

    value = retry_with(RULES, LADDER, ABOUT)
    globals()["retry"] = value
    return value
