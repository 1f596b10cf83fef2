"""The import side effect, kept tiny.

Strictly private. ``import mlx_vlm_safe`` runs :func:`activate` and nothing
else: it must cost a few milliseconds in a process that never touches mlx-vlm
and must never raise. Everything heavier (probes, wrappers, logging set-up)
lives in ``_patch`` and is imported only when mlx-vlm is.
"""

from __future__ import annotations

import sys

from . import _env, _hook

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType


def _on_import(module: ModuleType) -> None:
    from . import _patch

    _patch.on_import(module)


def activate() -> None:
    """Patch now if mlx_vlm is loaded, else when it is imported. Never raises."""
    try:
        if _env.parse_flag(_env.DISABLE):
            _env.decided = "disabled"
            return
    except ValueError as exc:
        # A typo in a kill switch still says "off": honour the intent, tell why.
        _env.decided = "disabled"
        _env.problem = f"{exc}; treating it as set"
        import logging

        logging.getLogger("mlx_vlm_safe").warning("mlx_vlm_safe: %s", _env.problem)
        return
    _env.decided = "pending"
    if _hook.PACKAGE in sys.modules:
        from . import _patch  # mlx_vlm is loaded: the heavy part is cheap now

        _patch.activate()
    else:
        _hook.install(_on_import)
