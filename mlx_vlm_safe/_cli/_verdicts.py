"""Plain answers to the questions operators ask, for ``mlx-vlm-safe doctor``.

Strictly private. The facts come from two places and each sentence says
which: the behaviour probes of the code loaded *here* (is this environment
affected?) and the per-release table in ``_releases`` (would another release
help? which one fixes it upstream?). What a defect means is its fix's: the
sentence and the upstream release come from the fix's spec (``FIXES``);
this module only orders them and answers where no fix applies. Nothing here
imports mlx or mlx-vlm.
"""

from __future__ import annotations

from collections.abc import Mapping

from packaging.version import InvalidVersion, Version

from .._patch import FIXES, stream_error
from .._releases import RELEASES, release_for

#: The probes behind the two questions answered every time (a fix's sentence
#: answers them where one applies; the defaults below otherwise).
_CRASH, _THREADS = "wired_limit", "thread_stream"


def needed(outcomes: dict[str, str]) -> set[str]:
    """The root-cause fixes the probes' verdicts call for, by name."""
    return {spec.name for spec in FIXES if spec.diagnosed(outcomes)}


def _span(wired_limit: str) -> str:
    rows = [r for r in RELEASES if r.verdicts.get(_CRASH) == wired_limit]
    return f"{rows[0].first}-{rows[-1].last}" if rows else "none"


def affected(
    device: str,
    version: str | None,
    outcomes: dict[str, str],
    details: Mapping[str, str | None] | None = None,
) -> list[str]:
    """Answer "is this environment affected?": one sentence per defect found.

    The NoneType/token crash first and the threads last, whatever was found;
    in between, each defect the probes found, in ``FIXES`` order. ``details``
    are the probes' details by name: where a sentence quotes an error, it
    quotes the one the probe got from the mlx and device loaded here.
    """
    where = f"mlx-vlm {version or '?'} on {device}"
    stream = _stream_error((details or {}).get(_THREADS), device)
    found = [spec for spec in FIXES if spec.doctor and spec.found(outcomes)]
    crash = next((s for s in found if _CRASH in s.when), None)
    threads = next((s for s in found if _THREADS in s.when), None)
    lines = [crash.sentence(where) if crash else _no_crash(where, outcomes)]
    lines += [s.sentence(where) for s in found if s not in (crash, threads)]
    lines.append(
        threads.sentence(where, stream=stream)
        if threads
        else _threads(outcomes.get(_THREADS))
    )
    row = release_for(version)
    if device == "metal" and row is not None and row.verdicts[_CRASH] == "swallows":
        lines.append(
            f"On Metal this release lets errors through; the same release on a "
            f"Linux server (CPU or CUDA) is affected ({_span('swallows')})."
        )
    return lines


def _no_crash(where: str, outcomes: dict[str, str]) -> str:
    """The crash question where no wired_limit fix applies."""
    if outcomes.get(_CRASH) in ("propagates", "absent"):
        return (
            f"Affected by the NoneType/token crash: no. {where}: errors raised "
            "during generation reach the caller."
        )
    return (
        f"Affected by the NoneType/token crash: unknown. {where}: the "
        "wired_limit probe did not run."
    )


def _stream_error(error: str | None, device: str) -> str:
    """The thread probe's own error, else the device's kind of stream.

    So the sentence names the stream of the device mlx runs on here
    (``Stream(gpu, 0)`` on CUDA and Metal), not always the CPU's.
    """
    quoted = (error or "").partition("; ")[0].rstrip(".")
    if quoted.startswith("RuntimeError: "):
        return quoted
    return stream_error(device)


def _threads(verdict: str | None) -> str:
    """Answer "can web handlers and thread pools call generate()?" (no fix needed)."""
    question = (
        "generate() from other threads (web handlers, thread pools, asyncio.to_thread):"
    )
    if verdict == "any_thread":
        return f"{question} works (each thread gets its own generation stream)."
    if verdict == "no_stream":
        return f"{question} works (the release uses mlx's default stream)."
    return f"{question} unknown (the thread probe did not run)."


def fixed_here(status: str, needed: set[str], applied: set[str]) -> str:
    """Whether the patch covers what the probes found, in this process."""
    if not needed:
        if status == "patched":
            return (
                "Nothing on the generate() path needs a root-cause fix here; the "
                "patch still guarantees a non-None result and records why "
                "generation ended."
            )
        return "Nothing on the generate() path needs a root-cause fix here."
    missing = sorted(needed - applied)
    if status == "patched" and not missing:
        order = [spec.name for spec in FIXES if spec.name in applied]
        return (
            f"Fixed in this process: the patch applied {', '.join(order)}; "
            "real errors reach the caller."
        )
    if status == "disabled":
        return (
            "NOT fixed in this process: MLX_VLM_SAFE_DISABLE is set, so the "
            "patch is off."
        )
    return (
        f"NOT fixed in this process: the patch is {status} and "
        f"{', '.join(missing)} is missing (see the warnings)."
    )


def pinning() -> str:
    """Would pinning mlx-vlm 0.3.4 help? (the advice people find online)."""
    row = release_for("0.3.4")
    if row is not None and row.verdicts[_CRASH] in ("propagates", "absent"):
        return "Would pinning mlx-vlm 0.3.4 help? Yes."  # pragma: no cover
    return (
        f"Would pinning mlx-vlm 0.3.4 help? No: {_span('swallows')} all carry "
        f"the same wired_limit defect, and {_span('fails_on_entry')} cannot "
        "generate off Metal at all."
    )


def upstream(version: str | None) -> str:
    """Which releases fix what upstream, and where the installed one stands."""
    fixed_in: dict[str, list[str]] = {}
    for spec in FIXES:
        if spec.fixed_upstream_in is not None:
            fixed_in.setdefault(spec.fixed_upstream_in, []).append(spec.name)
    releases = sorted(fixed_in, key=Version)
    never = [s.name for s in FIXES if s.root_cause and s.fixed_upstream_in is None]
    line = (
        "Which release fixes it upstream? mlx-vlm "
        + "; ".join(f"{r} ({', '.join(fixed_in[r])})" for r in releases)
        + f", so {releases[-1]}+ for all of them"
        + (
            f"; no mlx-vlm release makes {', '.join(never)} unnecessary."
            if never
            else "."
        )
    )
    try:
        installed = Version(version) if version else None
    except InvalidVersion:
        installed = None
    if installed is None:
        return line
    has = [r for r in releases if installed >= Version(r)]
    if len(has) == len(releases):
        return f"{line} The installed {version} has all of them."
    if not has:
        return f"{line} The installed {version} has none of them."
    return f"{line} The installed {version} has those of {' and '.join(has)} only."


def version_warnings(
    version: str | None, metadata_version: str | None, distributions: tuple[str, ...]
) -> list[str]:
    """Where the code's own version and the package metadata disagree."""
    warnings: list[str] = []
    if version and metadata_version and version != metadata_version:
        warnings.append(
            f"mlx_vlm.__version__ is {version} but the package metadata says "
            f"mlx-vlm {metadata_version}: the code on disk is not the release "
            "pip thinks it is (a fork or a co-install overwrote it); trust "
            "the probes."
        )
    elif version and metadata_version is None:
        warnings.append(
            f"mlx_vlm {version} has no 'mlx-vlm' package metadata: it comes "
            f"from another distribution ({', '.join(distributions) or 'unknown'}),"
            " probably a fork."
        )
    if len(distributions) > 1:
        warnings.append(
            f"{len(distributions)} distributions install the mlx_vlm package "
            f"({', '.join(distributions)}): their files overwrite each other."
        )
    if version is not None and release_for(version) is None:
        newest = RELEASES[-1].last
        warnings.append(
            f"mlx-vlm {version} is not in mlx_vlm_safe's release table (known: "
            f"{RELEASES[0].first}-{newest}); the verdicts come from the probes."
        )
    return warnings
