"""What ``import mlx_vlm_safe`` decided, for the patch to adopt when it loads.

Strictly private. Written by ``_activate`` (which must stay tiny) and read by
``_patch`` (which is imported only once mlx-vlm is): a module of its own so
that neither imports the other's state.
"""

from __future__ import annotations

#: "idle", "pending" (the hook is armed and mlx_vlm is not loaded yet) or
#: "disabled" (the kill switch).
status = "idle"
#: A malformed kill-switch value seen at import time, reported by ``_patch``.
env_problem: str | None = None
