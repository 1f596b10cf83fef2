"""Make ``mlx_vlm.generate()`` safe to call in production, with one import.

``import mlx_vlm_safe`` anywhere, before or after ``import mlx_vlm``: every
later ``generate()`` / ``stream_generate()`` call in the process gets the
fixes its mlx-vlm release needs. Set ``MLX_VLM_SAFE_DISABLE=1`` to turn the
import into a no-op.

This module stays tiny on purpose: the public names are loaded on first use
(PEP 562), so the import costs a few milliseconds and imports neither mlx nor
mlx_vlm; the work happens when mlx-vlm itself is imported.
"""

from __future__ import annotations

import importlib

from . import _activate

# Not ``typing.TYPE_CHECKING``: importing ``typing`` alone costs ~6 ms here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._patch import PatchError, is_patched, patch, report, unpatch
    from ._policy import (
        RetryPolicy,
        configure,
        get_policy,
        is_testing,
        policy_from_env,
        reset_config,
        set_testing,
    )
    from ._probe import Probe
    from ._records import AttemptRecord, RetryDetails, RetryHook
    from ._report import Fix, Report
    from ._results import Outcome, last_outcome
    from ._retry import retry
    from ._state import last_attempts, retries_disabled

_LAZY = {
    "PatchError": "._patch",
    "is_patched": "._patch",
    "patch": "._patch",
    "report": "._patch",
    "unpatch": "._patch",
    "Probe": "._probe",
    "Fix": "._report",
    "Report": "._report",
    "Outcome": "._results",
    "last_outcome": "._results",
    "RetryPolicy": "._policy",
    "configure": "._policy",
    "get_policy": "._policy",
    "is_testing": "._policy",
    "policy_from_env": "._policy",
    "reset_config": "._policy",
    "set_testing": "._policy",
    "AttemptRecord": "._records",
    "RetryDetails": "._records",
    "RetryHook": "._records",
    "retry": "._retry",
    "last_attempts": "._state",
    "retries_disabled": "._state",
}

__all__ = [
    "AttemptRecord",
    "Fix",
    "Outcome",
    "PatchError",
    "Probe",
    "Report",
    "RetryDetails",
    "RetryHook",
    "RetryPolicy",
    "configure",
    "get_policy",
    "is_patched",
    "is_testing",
    "last_attempts",
    "last_outcome",
    "patch",
    "policy_from_env",
    "report",
    "reset_config",
    "retries_disabled",
    "retry",
    "set_testing",
    "unpatch",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mlx_vlm_safe' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


_activate.activate()
