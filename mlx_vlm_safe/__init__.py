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
    from ._probe import Probe
    from ._report import Fix, Report
    from ._results import Outcome, last_outcome

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
}

__all__ = [
    "Fix",
    "Outcome",
    "PatchError",
    "Probe",
    "Report",
    "is_patched",
    "last_outcome",
    "patch",
    "report",
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
