"""``wired_limit`` off Metal: the root cause of the NoneType/token crash.

Strictly private. ``stream_generate`` runs under ``wired_limit``, looked up in
its module's globals at call time. Off Metal, 0.3.2-0.3.10's is ``try: yield /
finally: return``, which swallows every exception raised inside (Ctrl-C
included), and 0.1.22-0.3.1's fails on entry. The probe raises a private
exception inside it and sees which; the fix replaces it with one that lets
every exception through.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from ..._log import describe
from .. import _mlx
from .._locate import Located, mark
from .._report import Probe
from . import Context, FixSpec

NAME = "wired_limit"


class _ProbeSignal(Exception):
    """Raised inside ``wired_limit``; nobody else can raise or catch it."""


def probe_wired_limit(wired_limit: Callable[..., Any] | None) -> Probe:
    """Classify ``wired_limit`` on this device by what it does with an error."""
    if wired_limit is None:
        return Probe(NAME, "absent", "the release has no wired_limit")
    try:
        with wired_limit(None, []):
            raise _ProbeSignal
    except _ProbeSignal:
        return Probe(NAME, "propagates")
    except Exception as exc:  # failing on entry is a result, not a crash
        return Probe(NAME, "fails_on_entry", describe(exc, 200))
    return Probe(NAME, "swallows", "an exception raised inside vanished")


def probe(located: Located) -> Probe:
    """The probe on the release's ``wired_limit`` (``Located.wired_limit``)."""
    return probe_wired_limit(located.wired_limit)


def safe_wired_limit(original: Callable[..., Any], _: Context) -> Callable[..., Any]:
    """A ``wired_limit`` that lets every exception through.

    On Metal the release's own context manager runs (it sets the wired memory
    limit and propagates errors there); elsewhere there is no wired limit to
    set, so it only yields. No ``finally: return``, no ``device_info()``.
    """

    @contextlib.contextmanager
    def wired_limit(model: object, streams: object = None) -> Iterator[None]:
        if _mlx.backend_available("metal"):
            with original(model, streams):
                yield
        else:
            yield

    return mark(wired_limit, original)


PROPAGATE_ERRORS = FixSpec(
    "propagate_errors",
    "wired_limit swallowed every exception on this device; replaced so the "
    "real error (and Ctrl-C) reaches the caller",
    replaces="wired_limit",
    when={NAME: frozenset({"swallows"})},
    build=safe_wired_limit,
    probe=probe,
    root_cause=True,
    fixed_upstream_in="0.3.11",
    doctor="Affected by the NoneType/token crash: YES. {where}: wired_limit "
    "swallows every exception raised during generation (Ctrl-C included), so "
    "callers get AttributeError: 'NoneType' object has no attribute 'token', a "
    "cut answer or an empty result instead of the real error.",
)
GENERATE_OFF_METAL = FixSpec(
    "generate_off_metal",
    "wired_limit failed on entry on this device; replaced so generation runs off Metal",
    replaces="wired_limit",
    when={NAME: frozenset({"fails_on_entry"})},
    build=safe_wired_limit,
    probe=probe,
    root_cause=True,
    fixed_upstream_in="0.3.11",  # 0.3.2-0.3.10 swallow instead (see above)
    doctor="Affected by the NoneType/token crash: no, by something worse. "
    "{where}: wired_limit fails on entry, so every generation fails before the "
    "first token.",
)
