"""Environment variables that switch the library on and off.

Strictly private. Parsing lives here so that every entry point (the import
side effect, the ``.pth`` hook, the command line) reads the variables the same
way and rejects the same bad values.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

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


# --- every other MLX_VLM_SAFE_* variable: one registry of checks ---------------
#
# A variable is read where it is used (the retry policy on first failure, the
# memory guard on first admission, the metrics port when the patch applies),
# which may be long after start-up, and a bad value there falls back to the
# default. So that an operator still hears about a typo at once, each reader
# registers a check here; the patch runs every check when it applies and
# prints one line to stderr per bad value, and ``doctor`` lists them. The two
# start-up flags above are not registered: they are read before anything else
# can load, and report their own bad values (``problem``, the ``.pth`` hook).

#: name -> check: parse the raw value, raise ``ValueError`` saying why it is bad.
_CHECKS: dict[str, Callable[[str], object]] = {}
_WARNED: set[tuple[str, str]] = set()


def register(name: str, check: Callable[[str], object]) -> None:
    """Have ``name``'s value checked by ``check`` (which raises ``ValueError``).

    Registering a name again replaces its check (a module reloaded in tests).
    """
    _CHECKS[name] = check


def warned(name: str, raw: str) -> None:
    """Note that ``name=raw`` was already reported by its reader (not twice)."""
    _WARNED.add((name, raw))


def registered() -> tuple[str, ...]:
    """The variables with a check, sorted."""
    return tuple(sorted(_CHECKS))


def bad_values(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """One message per registered variable whose value its check refuses."""
    env = os.environ if environ is None else environ
    found: list[str] = []
    for name in sorted(_CHECKS):
        raw = env.get(name)
        if raw is None:
            continue
        try:
            _CHECKS[name](raw)
        except ValueError as exc:
            found.append(f"{name}={raw!r} is not valid ({exc}); ignored")
    return tuple(found)


def warn_bad_values(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Print each bad value to stderr, once per process; return all of them.

    stderr and not the package logger: the logger has a ``NullHandler`` until
    the app configures logging, and a typo in a setting must be seen by the
    operator who made it, in any app.
    """
    env = os.environ if environ is None else environ
    messages = bad_values(env)
    for message in messages:
        name = message.partition("=")[0]
        key = (name, env.get(name, ""))
        if key not in _WARNED:
            _WARNED.add(key)
            sys.stderr.write(f"mlx_vlm_safe: warning: {message}\n")
    return messages
