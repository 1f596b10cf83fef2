"""Make ``mlx_vlm.generate()`` safe to call in production, with one import.

``import mlx_vlm_safe`` anywhere, before or after ``import mlx_vlm``: every
later ``generate()`` / ``stream_generate()`` call in the process gets the
fixes its mlx-vlm release needs. Set ``MLX_VLM_SAFE_DISABLE=1`` to turn the
import into a no-op.

This module stays tiny on purpose: the public names are loaded on first use
(PEP 562), so the import costs a few milliseconds and imports neither mlx nor
mlx_vlm; the work happens when mlx-vlm itself is imported.

PYTEST_DONT_REWRITE: pytest marks the top-level modules of every distribution
with a ``pytest11`` entry point for assertion rewriting, and warns about any
already imported. ``mlx-vlm-safe run`` and ``MLX_VLM_SAFE_AUTOPATCH=1`` import
this package before pytest starts, so without this marker each such session
began with a ``PytestAssertRewriteWarning`` (fatal under ``-W error``). The
package has no assertions for pytest to rewrite.
"""

from __future__ import annotations

import importlib

from . import _activate

#: Where each public name lives: the one list of the public API. The block
#: below repeats it for type checkers only (they cannot follow ``__getattr__``);
#: tests/test_layout.py checks that the two agree, and docs/api.md is generated
#: from this list (tools/api_reference.py; tests/test_api_reference.py).
_PUBLIC = {
    "._patch": (
        "Fix",
        "GenerationCancelled",
        "Outcome",
        "PatchError",
        "Probe",
        "Report",
        "cancel_all",
        "deadline",
        "is_patched",
        "last_outcome",
        "patch",
        "report",
        "retry",
        "unpatch",
    ),
    "._retry": (
        "AttemptRecord",
        "RetryDetails",
        "RetryHook",
        "RetryPolicy",
        "get_policy",
        "is_testing",
        "last_attempts",
        "policy_from_env",
        "retries_disabled",
        "set_testing",
    ),
    "._configure": ("configure", "reset_config"),
    "._call_record": ("CallRecord",),
    ".instrumentation": ("Stats", "stats"),
    "._async": ("agenerate", "astream_generate"),
}
_LAZY = {name: module for module, names in _PUBLIC.items() for name in names}
__all__ = sorted(_LAZY)  # noqa: PLE0605 - built from _PUBLIC, checked by a test

# Not ``typing.TYPE_CHECKING``: importing ``typing`` costs more than this module.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    __version__: str
    from ._async import agenerate as agenerate
    from ._async import astream_generate as astream_generate
    from ._call_record import CallRecord as CallRecord
    from ._configure import configure as configure
    from ._configure import reset_config as reset_config
    from ._patch import Fix as Fix
    from ._patch import GenerationCancelled as GenerationCancelled
    from ._patch import Outcome as Outcome
    from ._patch import PatchError as PatchError
    from ._patch import Probe as Probe
    from ._patch import Report as Report
    from ._patch import cancel_all as cancel_all
    from ._patch import deadline as deadline
    from ._patch import is_patched as is_patched
    from ._patch import last_outcome as last_outcome
    from ._patch import patch as patch
    from ._patch import report as report
    from ._patch import retry as retry
    from ._patch import unpatch as unpatch
    from ._retry import AttemptRecord as AttemptRecord
    from ._retry import RetryDetails as RetryDetails
    from ._retry import RetryHook as RetryHook
    from ._retry import RetryPolicy as RetryPolicy
    from ._retry import get_policy as get_policy
    from ._retry import is_testing as is_testing
    from ._retry import last_attempts as last_attempts
    from ._retry import policy_from_env as policy_from_env
    from ._retry import retries_disabled as retries_disabled
    from ._retry import set_testing as set_testing
    from .instrumentation import Stats as Stats
    from .instrumentation import stats as stats


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = _version()
    else:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'mlx_vlm_safe' has no attribute {name!r}")
        value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def _version() -> str:
    """The installed distribution's version, read on first use.

    From the package metadata (one source of truth: ``pyproject.toml``),
    lazily, because ``importlib.metadata`` costs more to import than this
    whole module. A checkout used from ``PYTHONPATH`` has no metadata: it says
    ``0+unknown`` rather than a number that may be wrong.
    """
    from importlib import metadata

    try:
        return metadata.version("mlx-vlm-safe")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | {"__version__"})


_activate.activate()
