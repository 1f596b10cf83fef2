"""The package's logger, and how an error is shown in a log line or a report.

Strictly private. A library must never print through the root logger's
last-resort handler, so the ``NullHandler`` is added here, once, by whichever
part is imported first.
"""

from __future__ import annotations

import logging

log = logging.getLogger("mlx_vlm_safe")
if not any(isinstance(h, logging.NullHandler) for h in log.handlers):
    log.addHandler(logging.NullHandler())


def describe(exc: BaseException, limit: int = 300) -> str:
    """``Type: message``, cut at ``limit`` characters (reports stay readable)."""
    return f"{type(exc).__name__}: {exc}"[:limit]
