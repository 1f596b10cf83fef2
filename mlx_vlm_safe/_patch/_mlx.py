"""The few questions the patch asks mlx itself, without importing it.

Strictly private. mlx is read from ``sys.modules`` only: by the time the
patch runs, mlx-vlm has imported it, and ``doctor`` imports it on purpose
before asking. A broken backend query only changes a label, never fails.
"""

from __future__ import annotations

import sys
from types import ModuleType


def core() -> ModuleType | None:
    """``mlx.core`` if it is loaded."""
    return sys.modules.get("mlx.core")


def backend_available(name: str) -> bool:
    """Whether ``mx.<name>.is_available()`` says yes ("metal", "cuda")."""
    available = getattr(getattr(core(), name, None), "is_available", None)
    try:
        return bool(callable(available) and available())
    except Exception:  # a broken backend query only changes the answer
        return False


def device() -> str:
    """``"metal"``, ``"cuda"``, ``"cpu"``, or ``"unknown"`` without mlx."""
    for name in ("metal", "cuda"):
        if backend_available(name):
            return name
    return "cpu" if core() is not None else "unknown"
