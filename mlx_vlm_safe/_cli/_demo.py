"""``python -m mlx_vlm_safe demo``: the bug and the fix, side by side, offline.

Strictly private. Builds the tiny checkpoint into the cache directory, loads
it with the real ``mlx_vlm.load()``, and makes the same calls twice on the
installed release, first exactly as mlx-vlm ships, then patched, printing
what the caller gets each time, then a legend. Messages are shown in full,
wrapped within their column. The output is meant to be pasted into a bug
report; the README's sample is this output (``tools/readme_samples.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import logging
import sys
import textwrap
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from .. import _patch
from .._patch import last_outcome, text_of


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One realistic call and the fault planted into it, if any."""

    title: str
    kwargs: dict[str, Any]
    fault: Callable[[], contextlib.AbstractContextManager[Any]] | None = None


#: Width of the two outcome columns; longer messages wrap, never get cut.
COLUMN = 44

LEGEND = (
    "[length]/[stop]/[empty]: why a patched generation ended, from "
    "mlx_vlm_safe.last_outcome(): max_tokens reached / the model stopped / "
    "nothing was generated.",
    "The errors after 3 tokens, Ctrl-C and the empty stream are planted on "
    "purpose (mlx_vlm_safe.testing.plant_fault, empty_stream) inside the real "
    "generation; the other rows are real calls with arguments as they arrive "
    "from configs and JSON.",
    "The text is gibberish on purpose: the built-in tiny model has random "
    "weights; only its token counts and errors matter.",
)


def _scenarios(max_tokens: int) -> list[Scenario]:
    from ..testing import empty_stream, plant_fault

    return [
        Scenario(f"normal call, max_tokens={max_tokens}", {}),
        Scenario("repetition_penalty=1 (int from a config)", {"repetition_penalty": 1}),
        Scenario("temperature='0.7' (str from JSON)", {"temperature": "0.7"}),
        Scenario(
            "error after 3 tokens",
            {},
            lambda: plant_fault(RuntimeError("decoder failed"), after_tokens=3),
        ),
        Scenario(
            "Ctrl-C after 2 tokens",
            {},
            lambda: plant_fault(KeyboardInterrupt, after_tokens=2),
        ),
        Scenario("stream ends with nothing", {}, empty_stream),
        Scenario(
            "verbose=True + bad argument",
            {"verbose": True, "repetition_penalty": 1},
        ),
    ]


def _summary(result: object) -> str:
    """The result's shape, token count (where it carries one) and text start."""
    text = str(text_of(result))[:12]
    if isinstance(result, tuple):
        stats = result[1] if len(result) > 1 else None
        tokens = stats.get("output_tokens") if isinstance(stats, dict) else "?"
        return f"tuple, {tokens} tokens, text {text!r}"
    if isinstance(result, str):
        return f"str, text {text!r}"
    tokens = getattr(result, "generation_tokens", "?")
    return f"{type(result).__name__}, {tokens} tokens, text {text!r}"


def _outcome(call: Callable[[], object], patched: bool) -> str:
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stdout(quiet):
            result = call()
    except KeyboardInterrupt:
        return "KeyboardInterrupt (Ctrl-C reached the caller)"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    described = _summary(result)
    outcome = last_outcome() if patched else None
    return f"{described} [{outcome.finish_reason}]" if outcome else described


@contextlib.contextmanager
def _maybe(
    fault: Callable[[], contextlib.AbstractContextManager[Any]] | None,
) -> Iterator[None]:
    if fault is None:
        yield
    else:
        with fault():
            yield


def run(out: TextIO = sys.stdout, max_tokens: int = 8) -> int:
    """Run the demo and print the table; returns a process exit code."""
    import mlx_vlm

    from ..testing import build_tiny_checkpoint, tiny_image_path, tiny_prompt

    checkpoint = build_tiny_checkpoint()
    model, processor = mlx_vlm.load(str(checkpoint))
    prompt = tiny_prompt(processor, model.config, "Describe the picture.")
    image = [str(tiny_image_path())]

    report = _patch.patch()
    out.write(
        f"mlx-vlm {report.version} on {report.device}: "
        + ", ".join(f"{p.name}={p.outcome}" for p in report.probes)
        + f"\nfixes applied: {', '.join(report.fix_names()) or 'none'}\n"
        + f"checkpoint: {checkpoint}\n\n"
    )
    # The demo fails calls on purpose and its table shows each error: the
    # per-call WARNING (instrumentation's log line) would only repeat them.
    calls_log = logging.getLogger("mlx_vlm_safe.calls")
    was_disabled, calls_log.disabled = calls_log.disabled, True
    try:
        return _rows(out, max_tokens, (model, processor, prompt, image))
    finally:
        calls_log.disabled = was_disabled


def _rows(out: TextIO, max_tokens: int, loaded: tuple[Any, Any, str, list[str]]) -> int:
    """The demo's table, with everything loaded (see :func:`run`)."""
    import mlx_vlm

    model, processor, prompt, image = loaded
    rows: list[tuple[str, str, str]] = []
    for scenario in _scenarios(max_tokens):
        cells = []
        for patched in (False, True):
            if patched:
                _patch.patch()
            else:
                _patch.unpatch()
            kwargs = {"image": image, "max_tokens": max_tokens, **scenario.kwargs}
            with _maybe(scenario.fault):
                cells.append(
                    _outcome(
                        functools.partial(
                            mlx_vlm.generate, model, processor, prompt, **kwargs
                        ),
                        patched,
                    )
                )
        rows.append((scenario.title, cells[0], cells[1]))
    _patch.patch()
    _table(out, rows)
    out.write("\n" + "".join(_wrapped(line, 88, "- ", "  ") for line in LEGEND))
    return 0


def _wrapped(text: str, width: int, first: str = "", later: str = "") -> str:
    return (
        textwrap.fill(
            text,
            width,
            initial_indent=first,
            subsequent_indent=later,
            break_on_hyphens=False,
        )
        + "\n"
    )


def _table(out: TextIO, rows: list[tuple[str, str, str]]) -> None:
    """Print ``rows`` in three columns, wrapping long cells within theirs."""
    header = ("call", "what the caller gets unpatched", "patched (mlx_vlm_safe)")
    lines = [
        [
            textwrap.wrap(cell, COLUMN, break_on_hyphens=False) or [""] if i else [cell]
            for i, cell in enumerate(row)
        ]
        for row in (header, *rows)
    ]
    widths = [max(len(ln) for row in lines for ln in row[i]) for i in range(3)]
    for row in lines:
        for k in range(max(len(cell) for cell in row)):
            parts = [cell[k] if k < len(cell) else "" for cell in row]
            out.write(
                "  ".join(
                    p.ljust(w) for p, w in zip(parts, widths, strict=True)
                ).rstrip()
                + "\n"
            )
