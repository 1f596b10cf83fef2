"""``configure()`` and ``reset_config()``: every process-wide setting in one call.

Strictly private. The retry engine (``_retry``) owns the retry policy and the
memory guard (``_patch._memory``) its budget; neither knows the other. This
module takes one call's changes, checks all of them, and applies them only
if every one is valid, so a typo never leaves half a configuration behind.

Each setting is an explicit keyword-only parameter, so a type checker (and an
editor) knows them all and rejects ``configure(atempts=2)``. Adding a setting
is one line in the signature; the owner it is routed to is found by name
(``RETRY_SETTINGS``, ``MEMORY_SETTINGS``), and ``tests/test_configure.py``
fails if the signature and the owners' names disagree.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Final

from ._patch import _memory, checked_timeout, reset_timeout, set_timeout
from ._retry import RETRY_SETTINGS, RetryPolicy, get_policy
from ._retry import configure as configure_retry
from ._retry import reset_config as reset_retry

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._retry import RetryHook, RetryOn


class _Unchanged(enum.Enum):
    """The type of :data:`UNCHANGED` (an enum, so that type checkers narrow it)."""

    UNCHANGED = "UNCHANGED"

    def __repr__(self) -> str:
        return "UNCHANGED"


#: The default of every ``configure()`` parameter: "leave this setting as it
#: is". ``None`` cannot say it: ``deadline=None`` and ``memory_limit=None``
#: are settings of their own.
UNCHANGED: Final = _Unchanged.UNCHANGED


def configure(
    *,
    attempts: int | _Unchanged = UNCHANGED,
    ladder: tuple[Mapping[str, int], ...]
    | list[Mapping[str, int]]
    | _Unchanged = UNCHANGED,
    wait_base: float | _Unchanged = UNCHANGED,
    wait_max: float | _Unchanged = UNCHANGED,
    deadline: float | _Unchanged | None = UNCHANGED,
    retry_on: tuple[RetryOn, ...] | list[RetryOn] | _Unchanged = UNCHANGED,
    retry_empty: bool | _Unchanged = UNCHANGED,
    hooks: tuple[RetryHook, ...] | list[RetryHook] | _Unchanged = UNCHANGED,
    memory_limit: int | str | _Unchanged | None = UNCHANGED,
    memory_margin: int | str | _Unchanged | None = UNCHANGED,
    memory_wait: float | str | _Unchanged | None = UNCHANGED,
    memory_shorten: bool | str | _Unchanged = UNCHANGED,
    timeout: float | _Unchanged | None = UNCHANGED,
) -> RetryPolicy:
    """Change process-wide settings; return the retry policy now in force.

    Only the settings passed change. The ``RetryPolicy`` fields (``attempts``,
    ``ladder``, ``wait_base``, ``wait_max``, ``deadline``, ``retry_on``,
    ``retry_empty``, ``hooks``: see :class:`RetryPolicy`) and the memory
    guard's ``memory_limit`` (``None``/``"auto"``: the system's limits;
    ``"off"``; or what every generation in flight may take together, in
    bytes or as ``"512MB"``), ``memory_margin`` (bytes kept free),
    ``memory_wait`` (seconds a call that fits alone waits for memory;
    ``None``: the retry ``deadline``; ``0``: never) and ``memory_shorten``
    (``False``: a call that can never fit raises ``MemoryError`` instead of
    taking the retry ladder's smaller ``max_tokens``).
    ``timeout`` is the seconds each generation may run (``None``: no limit;
    the default is ``MLX_VLM_SAFE_TIMEOUT``, else none): past it a call stops
    at its next token and raises ``TimeoutError``; ``with deadline(...)``
    blocks override it. Not to be confused with ``deadline``, the retry
    policy's budget for starting new attempts.

    Raises:
        TypeError: an unknown setting (Python's own, from the signature).
        ValueError: an invalid value; then nothing is changed.

    """
    given = dict(locals())  # the parameters, and nothing else yet
    changes = {name: value for name, value in given.items() if value is not UNCHANGED}
    return _apply(changes)


def _apply(changes: dict[str, object]) -> RetryPolicy:
    """Check every change with its owner, then apply them all (or none)."""
    timing = "timeout" in changes  # the one name in DEADLINE_SETTINGS
    timeout = checked_timeout("timeout", changes.pop("timeout", None))
    memory = {k: changes.pop(k) for k in _memory.MEMORY_SETTINGS if k in changes}
    unrouted = sorted(set(changes) - RETRY_SETTINGS)
    if unrouted:  # a parameter added to the signature but to no owner
        raise TypeError(f"configure() has no owner for: {', '.join(unrouted)}")
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
