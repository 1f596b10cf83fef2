"""Plain answers to the questions operators ask, for ``mlx-vlm-safe doctor``.

Strictly private. The facts come from two places and each sentence says
which: the behaviour probes of the code loaded *here* (is this environment
affected?) and the per-release table in ``_releases`` (would another release
help? which one fixes it upstream?). Nothing here imports mlx or mlx-vlm.
"""

from __future__ import annotations

from collections.abc import Mapping

from packaging.version import InvalidVersion, Version

from .._patch import FIXES
from .._releases import (
    FIXED_UPSTREAM_IN,
    RELEASES,
    UTF8_FIXED_IN,
    WIRED_LIMIT_FIXED_IN,
    release_for,
)


def needed(outcomes: dict[str, str]) -> set[str]:
    """The root-cause fixes the probes' verdicts call for, by name."""
    return {spec.name for spec in FIXES if spec.diagnosed(outcomes)}


def _span(wired_limit: str) -> str:
    rows = [r for r in RELEASES if r.wired_limit == wired_limit]
    return f"{rows[0].first}-{rows[-1].last}" if rows else "none"


def affected(
    device: str,
    version: str | None,
    outcomes: dict[str, str],
    details: Mapping[str, str | None] | None = None,
) -> list[str]:
    """Answer "is this environment affected by the NoneType/token crash?".

    ``details`` are the probes' details by name: where a sentence quotes an
    error, it quotes the one the probe got from the mlx and device loaded here.
    """
    where = f"mlx-vlm {version or '?'} on {device}"
    wired = outcomes.get("wired_limit")
    lines: list[str] = []
    if wired == "swallows":
        lines.append(
            f"Affected by the NoneType/token crash: YES. {where}: wired_limit "
            "swallows every exception raised during generation (Ctrl-C "
            "included), so callers get AttributeError: 'NoneType' object has "
            "no attribute 'token', a cut answer or an empty result instead of "
            "the real error."
        )
    elif wired == "fails_on_entry":
        lines.append(
            "Affected by the NoneType/token crash: no, by something worse. "
            f"{where}: wired_limit fails on entry, so every generation fails "
            "before the first token."
        )
    elif wired in ("propagates", "absent"):
        lines.append(
            f"Affected by the NoneType/token crash: no. {where}: errors raised "
            "during generation reach the caller."
        )
    else:
        lines.append(
            f"Affected by the NoneType/token crash: unknown. {where}: the "
            "wired_limit probe did not run."
        )
    if outcomes.get("empty_stream") == "unguarded":
        lines.append(
            "generate() dereferences the last stream item unguarded: a stream "
            "that yields nothing ends as the same AttributeError."
        )
    if outcomes.get("utf8_decode") == "strict":
        lines.append(
            "Model output that is not valid UTF-8 (an emoji or CJK character "
            "split between tokens, an OCR crop, a sampled byte) ends the "
            "generation with UnicodeDecodeError in this release's byte-level "
            f"detokenizer (mlx-vlm {UTF8_FIXED_IN} replaces such bytes)."
        )
    thread_error = (details or {}).get("thread_stream")
    lines.append(_threads(outcomes.get("thread_stream"), thread_error, device))
    row = release_for(version)
    if device == "metal" and row is not None and row.wired_limit == "swallows":
        lines.append(
            f"On Metal this release lets errors through; the same release on a "
            f"Linux server (CPU or CUDA) is affected ({_span('swallows')})."
        )
    return lines


def _threads(verdict: str | None, error: str | None, device: str) -> str:
    """Answer "can web handlers and thread pools call generate()?".

    The error quoted is the thread probe's own (``error``: its detail), so it
    names the stream of the device mlx runs on here (``Stream(gpu, 0)`` on
    CUDA and Metal); without it, the device's kind of stream.
    """
    question = (
        "generate() from other threads (web handlers, thread pools, asyncio.to_thread):"
    )
    if verdict == "bound_to_importing_thread":
        quoted = (error or "").partition("; ")[0].rstrip(".")
        if not quoted.startswith("RuntimeError: "):
            kind = "cpu" if device == "cpu" else "gpu"
            quoted = f"RuntimeError: There is no Stream({kind}, …) in current thread"
        return (
            f"{question} FAILS without the patch: the release made its "
            "generation stream at import and this mlx binds streams to the "
            f"thread that made them ({quoted}, or the NoneType/token crash where "
            "errors are swallowed)."
        )
    if verdict == "shared_by_threads":
        return (
            f"{question} one at a time only without the patch: this mlx shares "
            "the generation stream between threads, and concurrent calls crash "
            "the process (segmentation fault); the patch runs their steps one at "
            "a time."
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
        order = [spec.name for spec in FIXES if spec.name in needed]
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
    if row is not None and row.wired_limit in ("propagates", "absent"):
        return "Would pinning mlx-vlm 0.3.4 help? Yes."  # pragma: no cover
    return (
        f"Would pinning mlx-vlm 0.3.4 help? No: {_span('swallows')} all carry "
        f"the same wired_limit defect, and {_span('fails_on_entry')} cannot "
        "generate off Metal at all."
    )


def upstream(version: str | None) -> str:
    """Which release fixes it upstream, and where the installed one stands."""
    line = (
        f"Which release fixes it upstream? {WIRED_LIMIT_FIXED_IN} lets errors "
        f"through; {FIXED_UPSTREAM_IN} also guards generate() against an empty "
        "stream."
    )
    try:
        installed = Version(version) if version else None
    except InvalidVersion:
        installed = None
    if installed is None:
        return line
    if installed >= Version(FIXED_UPSTREAM_IN):
        return f"{line} The installed {version} has both."
    if installed >= Version(WIRED_LIMIT_FIXED_IN):
        return f"{line} The installed {version} has the first only."
    return f"{line} The installed {version} has neither."


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
