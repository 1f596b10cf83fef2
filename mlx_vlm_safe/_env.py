"""Environment variables that switch the library on and off.

Strictly private. Parsing lives here so that every entry point (the import
side effect, the ``.pth`` hook, the command line) reads the variables the same
way and rejects the same bad values.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

#: Set to a true value to turn ``import mlx_vlm_safe`` into a no-op.
DISABLE = "MLX_VLM_SAFE_DISABLE"
#: Set to a true value to activate the patch at interpreter start (read by the
#: ``.pth`` hook and ``mlx-vlm-safe run``'s ``sitecustomize``, which cannot
#: import this module: ``_bootstrap/_mlx_vlm_safe_autopatch.py`` repeats the
#: spellings below for that reason).
AUTOPATCH = "MLX_VLM_SAFE_AUTOPATCH"

#: What ``import mlx_vlm_safe`` decided from these variables, for the patch to
#: adopt when it loads (``_activate`` writes it; kept here, where both can read
#: it, so that neither imports the other): "idle", "pending" (the hook is
#: armed, mlx_vlm not loaded yet) or "disabled" (the kill switch).
decided = "idle"
#: A malformed kill-switch value seen at import time, reported by the patch.
problem: str | None = None

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


def parse_flag(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Read a boolean variable; an unset variable is False.

    Raises:
        ValueError: the value is not one of the spellings we accept. We refuse
            to guess, because a typo in a kill switch must not silently leave
            the patch on (or off).

    """
    env = os.environ if environ is None else environ
    raw = env.get(name)
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    accepted = ", ".join(sorted(_TRUE | (_FALSE - {""})))
    raise ValueError(f"{name}={raw!r} is not a boolean; use one of: {accepted}")
