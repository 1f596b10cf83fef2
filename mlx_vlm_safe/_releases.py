"""What every known mlx-vlm release does off Metal, as data.

Strictly private; re-exported through ``doctor`` and the README table. The
patch itself never reads this table (it decides by behaviour probes); the
tests do, to check that the probes classify each real release as measured,
and so does ``doctor``, to answer operators' questions ("would pinning 0.3.4
help?"). Source: ``shared/docs/mlx-vlm-matrix.md`` (all 75 releases probed).
"""

from __future__ import annotations

import dataclasses

from packaging.version import Version


@dataclasses.dataclass(frozen=True)
class Release:
    """One behaviour range of mlx-vlm releases, on a non-Metal device."""

    first: str
    last: str
    layout: str
    wired_limit: str
    empty_stream: str
    shape: str
    broken: str
    fixes: tuple[str, ...]

    def contains(self, version: str) -> bool:
        """Whether ``version`` falls in this range (inclusive)."""
        return Version(self.first) <= Version(version) <= Version(self.last)


_GENERIC = ("observed_stream", "none_safe_generate")

RELEASES: tuple[Release, ...] = (
    Release(
        "0.1.0", "0.1.6", "utils", "absent", "inconclusive", "str",
        "max_tokens=0 raises UnboundLocalError; generate() bypasses the stream",
        ("never_empty_stream", "none_safe_generate"),
    ),
    Release(
        "0.1.7", "0.1.21", "utils", "absent", "guarded", "str",
        "verbose=True with empty text returns None",
        _GENERIC,
    ),
    Release(
        "0.1.22", "0.1.25", "utils", "fails_on_entry", "guarded", "str",
        "every generation fails on entry off Metal (wired_limit calls "
        "device_info); verbose=True with empty text returns None",
        ("generate_off_metal", *_GENERIC),
    ),
    Release(
        "0.1.26", "0.2.0", "utils", "fails_on_entry", "unguarded", "tuple",
        "every generation fails on entry off Metal; returns a (text, stats) "
        "tuple, or None with verbose=True and empty text",
        ("generate_off_metal", "never_empty_stream", "none_safe_generate"),
    ),
    Release(
        "0.3.0", "0.3.1", "module", "fails_on_entry", "unguarded", "result",
        "every generation fails on entry off Metal; an empty stream raises "
        "AttributeError 'NoneType' ... 'token'",
        ("generate_off_metal", "never_empty_stream", "none_safe_generate"),
    ),
    Release(
        "0.3.2", "0.3.10", "module", "swallows", "unguarded", "result",
        "wired_limit swallows every exception off Metal (also Ctrl-C): "
        "AttributeError 'NoneType' ... 'token', cut answers, silent empty "
        "results",
        ("propagate_errors", "never_empty_stream", "none_safe_generate"),
    ),
    Release(
        "0.3.11", "0.5.0", "module", "propagates", "unguarded", "result",
        "generate() dereferences the last stream item unguarded",
        ("never_empty_stream", "none_safe_generate"),
    ),
    Release(
        "0.6.0", "0.7.10", "package", "propagates", "guarded", "result",
        "nothing known on the generate() path",
        _GENERIC,
    ),
)

#: The first release whose generate() path has none of the defects above.
FIXED_UPSTREAM_IN = "0.6.0"
#: The first release whose wired_limit lets exceptions through off Metal.
WIRED_LIMIT_FIXED_IN = "0.3.11"


def release_for(version: str | None) -> Release | None:
    """The known behaviour range of ``version``, or ``None`` if unknown."""
    if version is None:
        return None
    try:
        return next((r for r in RELEASES if r.contains(version)), None)
    except ValueError:  # not a PEP 440 version: a fork's or a local build's
        return None
