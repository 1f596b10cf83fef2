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


@dataclasses.dataclass(frozen=True)
class Release:
    """One behaviour range of mlx-vlm releases, on a non-Metal device."""

    first: str
    last: str
    #: Where generate() lives: "utils", "module" or "package".
    layout: str
    #: The ``wired_limit`` probe's verdict off Metal.
    wired_limit: str
    #: The ``empty_stream`` probe's verdict.
    empty_stream: str
    #: What generate() returns: "str", "tuple" or "result".
    shape: str
    #: What was broken, in a sentence.
    broken: str
    #: The fixes applied (before the thread and detokenizer fixes, which
    #: depend on mlx and on ``detokenizer``).
    fixes: tuple[str, ...]
    #: How ``mlx_vlm.server`` binds generate: "absent", "V1", "V2", "V2+RG",
    #: "V3+RG".
    server: str = "absent"
    #: The generation stream: "none" (mlx's default stream), "import" (made
    #: at import: bound to the importing thread where mlx binds streams) or
    #: "thread_local" (works on any thread).
    stream: str = "none"
    #: stream_generate's detokenizer: "shared" (the processor's, up to 0.4.4)
    #: or "per_call" (0.5.0+); the ``detokenizer`` probe's verdict.
    detokenizer: str = "shared"
    #: The byte-level BPE detokenizer on invalid UTF-8: "strict" (raises, up
    #: to 0.6.8) or "replaces"; the ``utf8_decode`` probe's verdict.
    utf8: str = "strict"

    def contains(self, version: str) -> bool:
        """Whether ``version`` falls in this range (inclusive)."""
        from packaging.version import Version  # only once mlx-vlm is there

        return Version(self.first) <= Version(version) <= Version(self.last)


_GENERIC = ("observed_stream", "none_safe_generate")
_UTF8 = "replace_invalid_utf8"
_UTF8_BROKEN = "model output that is not valid UTF-8 raises UnicodeDecodeError"

# fmt: off
RELEASES: tuple[Release, ...] = (
    Release(
        "0.1.0", "0.1.6", "utils", "absent", "inconclusive", "str",
        "max_tokens=0 raises UnboundLocalError; generate() bypasses the stream; "
        f"{_UTF8_BROKEN}",
        ("never_empty_stream", "none_safe_generate", _UTF8),
    ),
    Release(
        "0.1.7", "0.1.21", "utils", "absent", "guarded", "str",
        f"verbose=True with empty text returns None; {_UTF8_BROKEN}",
        (*_GENERIC, _UTF8),
    ),
    Release(
        "0.1.22", "0.1.25", "utils", "fails_on_entry", "guarded", "str",
        "every generation fails on entry off Metal (wired_limit calls "
        "device_info); verbose=True with empty text returns None; "
        f"{_UTF8_BROKEN}",
        ("generate_off_metal", *_GENERIC, _UTF8),
        stream="import",
    ),
    Release(
        "0.1.26", "0.2.0", "utils", "fails_on_entry", "unguarded", "tuple",
        "every generation fails on entry off Metal; returns a (text, stats) "
        "tuple, or None with verbose=True and empty text; "
        f"{_UTF8_BROKEN}",
        ("generate_off_metal", "never_empty_stream", "none_safe_generate", _UTF8),
        server="V1",
        stream="import",
    ),
    Release(
        "0.3.0", "0.3.1", "module", "fails_on_entry", "unguarded", "result",
        "every generation fails on entry off Metal; an empty stream raises "
        f"AttributeError 'NoneType' ... 'token'; {_UTF8_BROKEN}",
        ("generate_off_metal", "never_empty_stream", "none_safe_generate", _UTF8),
        server="V2",
        stream="import",
    ),
    Release(
        "0.3.2", "0.3.10", "module", "swallows", "unguarded", "result",
        "wired_limit swallows every exception off Metal (also Ctrl-C): "
        "AttributeError 'NoneType' ... 'token', cut answers, silent empty "
        f"results; {_UTF8_BROKEN}",
        ("propagate_errors", "never_empty_stream", "none_safe_generate", _UTF8),
        server="V2",
        stream="import",
    ),
    Release(
        "0.3.11", "0.4.4", "module", "propagates", "unguarded", "result",
        f"generate() dereferences the last stream item unguarded; {_UTF8_BROKEN}",
        ("never_empty_stream", "none_safe_generate", _UTF8),
        server="V2",
        stream="import",
    ),
    Release(
        "0.5.0", "0.5.0", "module", "propagates", "unguarded", "result",
        f"generate() dereferences the last stream item unguarded; {_UTF8_BROKEN}",
        ("never_empty_stream", "none_safe_generate", _UTF8),
        server="V2",
        stream="thread_local",
        detokenizer="per_call",
    ),
    Release(
        "0.6.0", "0.6.8", "package", "propagates", "guarded", "result",
        _UTF8_BROKEN,
        (*_GENERIC, _UTF8),
        server="V3+RG",
        stream="thread_local",
        detokenizer="per_call",
    ),
    Release(
        "0.6.9", "0.7.10", "package", "propagates", "guarded", "result",
        "nothing known on the generate() path",
        _GENERIC,
        server="V3+RG",
        stream="thread_local",
        detokenizer="per_call",
        utf8="replaces",
    ),
)
# fmt: on

#: The newest release the table knows.
KNOWN_NEWEST = RELEASES[-1].last
#: The first release whose generate() guards against an empty stream.
FIXED_UPSTREAM_IN = "0.6.0"
#: The first release whose wired_limit lets exceptions through off Metal.
WIRED_LIMIT_FIXED_IN = "0.3.11"
#: The first release whose detokenizer survives output that is not UTF-8.
UTF8_FIXED_IN = "0.6.9"


def release_for(version: str | None) -> Release | None:
    """The known behaviour range of ``version``, or ``None`` if unknown."""
    if version is None:
        return None
    try:
        return next((r for r in RELEASES if r.contains(version)), None)
    except ValueError:  # not a PEP 440 version: a fork's or a local build's
        return None
