"""What each known mlx-vlm release's generate path does off Metal, as data.

Strictly private. The patch decides by behaviour probes, never by this table
(a release the table does not know is still handled); it reads only
``KNOWN_NEWEST``, to warn about a newer release.
``doctor`` reads it to answer operators' questions about releases other than
the installed one ("would pinning 0.3.4 help?", "is this release known?").

Only the runtime columns live here. What the tests and CI expect of each
environment, and the README table built from both, are in ``tools/`` of the
repository and not in the wheel.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping


@dataclasses.dataclass(frozen=True)
class Release:
    """One behaviour range of mlx-vlm releases, on a non-Metal device."""

    first: str
    last: str
    #: Where generate() lives: "utils", "module" or "package".
    layout: str
    #: What each probe finds in this range off Metal: probe name -> verdict
    #: (``report().probe(name)``). The fixes applied follow from these and
    #: the fixes' ``when`` (``_patch.FIXES``); the ``thread_stream`` verdict
    #: depends on mlx as well, so it is not here (see ``stream``).
    verdicts: Mapping[str, str] = dataclasses.field(hash=False)
    #: What was broken, in a sentence.
    broken: str
    #: How ``mlx_vlm.server`` binds generate: "absent", "V1", "V2", "V2+RG",
    #: "V3+RG".
    server: str = "absent"
    #: The generation stream: "none" (mlx's default stream), "import" (made
    #: at import: bound to the importing thread where mlx binds streams) or
    #: "thread_local" (works on any thread).
    stream: str = "none"

    def contains(self, version: str) -> bool:
        """Whether ``version`` falls in this range (inclusive)."""
        from packaging.version import Version  # only once mlx-vlm is there

        return Version(self.first) <= Version(version) <= Version(self.last)


_UTF8_BROKEN = "model output that is not valid UTF-8 raises UnicodeDecodeError"

# fmt: off
RELEASES: tuple[Release, ...] = (
    Release(
        "0.1.0", "0.1.6", "utils",
        {
            "wired_limit": "absent",
            "empty_stream": "inconclusive",
            "result_shape": "str",
            "detokenizer": "shared",
            "utf8_decode": "strict",
            "stream_kwargs": "inconclusive",
        },
        "max_tokens=0 raises UnboundLocalError; generate() bypasses the stream; "
        f"{_UTF8_BROKEN}",
    ),
    Release(
        "0.1.7", "0.1.9", "utils",
        {
            "wired_limit": "absent",
            "empty_stream": "guarded",
            "result_shape": "str",
            "detokenizer": "shared",
            "utf8_decode": "strict",
            "stream_kwargs": "dropped",
        },
        # the dropped keywords: the kwargs_dropped fact (tools/matrix.py)
        f"verbose=True with empty text returns None; {_UTF8_BROKEN}",
    ),
    Release(
        "0.1.10", "0.1.21", "utils",
        {
            "wired_limit": "absent",
            "empty_stream": "guarded",
            "result_shape": "str",
            "detokenizer": "shared",
            "utf8_decode": "strict",
            "stream_kwargs": "passed",
        },
        f"verbose=True with empty text returns None; {_UTF8_BROKEN}",
    ),
    Release(
        "0.1.22", "0.1.25", "utils",
        {
            "wired_limit": "fails_on_entry",
            "empty_stream": "guarded",
            "result_shape": "str",
            "detokenizer": "shared",
            "utf8_decode": "strict",
            "stream_kwargs": "passed",
        },
        "every generation fails on entry off Metal (wired_limit calls "
        "device_info); verbose=True with empty text returns None; "
        f"{_UTF8_BROKEN}",
        stream="import",
    ),
    Release(
        "0.1.26", "0.2.0", "utils",
        {
            "wired_limit": "fails_on_entry",
            "empty_stream": "unguarded",
            "result_shape": "tuple",
            "detokenizer": "shared",
            "utf8_decode": "strict",
            "stream_kwargs": "passed",
        },
        "every generation fails on entry off Metal; returns a (text, stats) "
        "tuple, or None with verbose=True and empty text; "
        f"{_UTF8_BROKEN}",
        server="V1",
        stream="import",
    ),
    Release(
        "0.3.0", "0.3.1", "module",
        {
            "wired_limit": "fails_on_entry",
            "empty_stream": "unguarded",
            "result_shape": "result",
            "detokenizer": "shared",
            "utf8_decode": "strict",
            "stream_kwargs": "passed",
        },
        "every generation fails on entry off Metal; an empty stream raises "
        f"AttributeError 'NoneType' ... 'token'; {_UTF8_BROKEN}",
        server="V2",
        stream="import",
    ),
    Release(
        "0.3.2", "0.3.10", "module",
        {
            "wired_limit": "swallows",
            "empty_stream": "unguarded",
            "result_shape": "result",
            "detokenizer": "shared",
            "utf8_decode": "strict",
            "stream_kwargs": "passed",
        },
        "wired_limit swallows every exception off Metal (also Ctrl-C): "
        "AttributeError 'NoneType' ... 'token', cut answers, silent empty "
        f"results; {_UTF8_BROKEN}",
        server="V2",
        stream="import",
    ),
    Release(
        "0.3.11", "0.4.4", "module",
        {
            "wired_limit": "propagates",
            "empty_stream": "unguarded",
            "result_shape": "result",
            "detokenizer": "shared",
            "utf8_decode": "strict",
            "stream_kwargs": "passed",
        },
        f"generate() dereferences the last stream item unguarded; {_UTF8_BROKEN}",
        server="V2",
        stream="import",
    ),
    Release(
        "0.5.0", "0.5.0", "module",
        {
            "wired_limit": "propagates",
            "empty_stream": "unguarded",
            "result_shape": "result",
            "detokenizer": "per_call",
            "utf8_decode": "strict",
            "stream_kwargs": "passed",
        },
        f"generate() dereferences the last stream item unguarded; {_UTF8_BROKEN}",
        server="V2",
        stream="thread_local",
    ),
    Release(
        "0.6.0", "0.6.8", "package",
        {
            "wired_limit": "propagates",
            "empty_stream": "guarded",
            "result_shape": "result",
            "detokenizer": "per_call",
            "utf8_decode": "strict",
            "stream_kwargs": "passed",
        },
        _UTF8_BROKEN,
        server="V3+RG",
        stream="thread_local",
    ),
    Release(
        "0.6.9", "0.7.10", "package",
        {
            "wired_limit": "propagates",
            "empty_stream": "guarded",
            "result_shape": "result",
            "detokenizer": "per_call",
            "utf8_decode": "replaces",
            "stream_kwargs": "passed",
        },
        "nothing known on the generate() path",
        server="V3+RG",
        stream="thread_local",
    ),
)
# fmt: on

#: The newest release the table knows.
KNOWN_NEWEST = RELEASES[-1].last


def release_for(version: str | None) -> Release | None:
    """The known behaviour range of ``version``, or ``None`` if unknown."""
    if version is None:
        return None
    try:
        return next((r for r in RELEASES if r.contains(version)), None)
    except ValueError:  # not a PEP 440 version: a fork's or a local build's
        return None
