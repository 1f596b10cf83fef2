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

#: Where each public name lives: the one list of the public API. The block
#: below repeats it for type checkers only (they cannot follow ``__getattr__``);
#: tests/test_public_api.py checks that the two agree.
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
        "unpatch",
    ),
    "._retry": (
        "retry",
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
    "._async": ("agenerate", "astream_generate"),
}
_LAZY = {name: module for module, names in _PUBLIC.items() for name in names}
__all__ = sorted(_LAZY)  # noqa: PLE0605 - built from _PUBLIC, checked by a test

# Not ``typing.TYPE_CHECKING``: importing ``typing`` costs more than this module.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._async import agenerate as agenerate
    from ._async import astream_generate as astream_generate
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
    from ._retry import retry as retry
    from ._retry import set_testing as set_testing


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
