"""``configure()`` and ``reset_config()``: every process-wide setting in one call.

Strictly private. The retry engine (``_retry``) owns the retry policy and the
memory guard (``_patch._memory``) its budget; neither knows the other. This
module takes one call's changes, checks all of them, and applies them only
if every one is valid, so a typo never leaves half a configuration behind.
"""

from __future__ import annotations

from ._patch import _memory, checked_timeout, reset_timeout, set_timeout
from ._retry import RETRY_SETTINGS, RetryPolicy, get_policy
from ._retry import configure as configure_retry
from ._retry import reset_config as reset_retry


def configure(**changes: object) -> RetryPolicy:
    """Change process-wide settings; return the retry policy now in force.

    Takes ``RetryPolicy`` fields (``attempts``, ``ladder``, ``wait_base``,
    ``wait_max``, ``deadline``, ``retry_on``, ``retry_empty``, ``hooks``) and
    the memory guard's ``memory_limit`` (``None``/``"auto"``: the system's
    limits; ``"off"``; or what one generation may add, in bytes or as
    ``"512MB"``) and ``memory_margin`` (bytes kept free), and ``timeout``:
    the seconds each generation may run (``None``: no limit; the default is
    ``MLX_VLM_SAFE_TIMEOUT``, else none). Past it a call stops at its next
    token and raises ``TimeoutError``; ``with deadline(...)`` blocks override
    it. Not to be confused with ``deadline``, the retry policy's budget for
    starting new attempts.

    Raises:
        TypeError: an unknown setting.
        ValueError: an invalid value; then nothing is changed.

    """
    known = RETRY_SETTINGS | _memory.MEMORY_SETTINGS | {"timeout"}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise TypeError(
            f"unknown setting(s): {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    timing = "timeout" in changes
    timeout = checked_timeout("timeout", changes.pop("timeout", None))
    memory = {k: changes.pop(k) for k in _memory.MEMORY_SETTINGS if k in changes}
    new_memory = _memory.updated(memory) if memory else None
    policy = configure_retry(**changes) if changes else get_policy()
    if new_memory is not None:
        _memory.use(new_memory)
    if timing:
        set_timeout(timeout)
    return policy


def reset_config() -> None:
    """Forget ``configure()`` changes; the environment is read again on next use."""
    reset_retry()
    _memory.reset_memory()
    reset_timeout()
