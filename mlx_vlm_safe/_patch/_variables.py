"""The patch's own ``MLX_VLM_SAFE_*`` variables, registered for checking.

Strictly private. The memory guard reads ``MLX_VLM_SAFE_MEMORY_LIMIT``,
``..._MARGIN``, ``..._WAIT`` and ``..._SHORTEN`` at its first admission and
falls back to the defaults on a bad value; registering the same parser here
(``_env.register``) makes a typo show when the patch applies, and in
``doctor``. A module of its own so that the
guard's code is not touched by this concern.
"""

from __future__ import annotations

from collections.abc import Callable

from .. import _env
from ._deadlines import TIMEOUT_VARIABLE, parse_timeout
from ._memory._budget import (
    LIMIT_VARIABLE,
    MARGIN_VARIABLE,
    SHORTEN_VARIABLE,
    WAIT_VARIABLE,
    parse_size,
    parse_switch,
    parse_wait,
)

__all__ = ["register"]


def _size_check(name: str) -> Callable[[str], object]:
    def check(raw: str) -> object:
        return parse_size(raw, name)

    return check


def register() -> None:
    """Register the memory variables' checks (idempotent)."""
    for name in (LIMIT_VARIABLE, MARGIN_VARIABLE):
        _env.register(name, _size_check(name))
    _env.register(WAIT_VARIABLE, lambda raw: parse_wait(raw, WAIT_VARIABLE))
    _env.register(SHORTEN_VARIABLE, lambda raw: parse_switch(raw, SHORTEN_VARIABLE))
    _env.register(TIMEOUT_VARIABLE, parse_timeout)


register()
