"""The text form of ``mlx-vlm-safe doctor``: facts, probes, patch, verdicts.

Strictly private. Kept apart from ``_doctor``, which collects the facts, so
that the two forms cannot drift: both are views of the same ``Diagnosis``.
Long verdicts are wrapped at 88 columns so the output pastes into a bug
report or a terminal as it is.
"""

from __future__ import annotations

import textwrap

from .._env import AUTOPATCH
from ._diagnosis import BACKENDS, Diagnosis


def _row(label: str, value: object) -> str:
    return f"  {label:<14}{value}\n"


def _wrap(bullet: str, text: str) -> str:
    return (
        textwrap.fill(
            text,
            88,
            initial_indent=bullet,
            subsequent_indent="    ",
            break_on_hyphens=False,  # never split a package name like mlx-vlm
        )
        + "\n"
    )


def _this_process(d: Diagnosis) -> str:
    """The patch in doctor's own process, and whether it was there at start."""
    if not d.patch.active:
        return d.patch.status
    if d.activation.activated_at_start:  # mlx-vlm-safe run, or the .pth hook
        return (
            f"{d.patch.status} (active already at start-up: mlx-vlm-safe run or "
            f"{AUTOPATCH}=1 activated it)"
        )
    return f"{d.patch.status} (active)"


def render(d: Diagnosis) -> str:
    """The human-readable form: facts, probes, patch, then verdicts."""
    v = d.packages
    backends = [f"{n} {v[n]}" for n in BACKENDS if v[n]]
    mlx = f"{v['mlx'] or '-'} ({', '.join(backends) or 'no backend package'})"
    if v["mlx"] is None and not d.mlx["importable"]:
        mlx = "not installed"
    elif d.mlx["error"]:
        mlx += f"; cannot load: {d.mlx['error']}"
    m = d.mlx_vlm
    mlx_vlm = "not installed"
    if m.installed and not m.importable:
        mlx_vlm = f"{m.metadata_version or '?'} (metadata); cannot be imported"
    elif m.installed:
        mlx_vlm = (
            f"{m.version or '?'} (__version__), {m.metadata_version or '-'} (metadata)"
        )
        if m.release:
            mlx_vlm += f"; behaves like {m.release}"
    out = ["mlx-vlm-safe doctor\n"]
    out += [
        _row("python", f"{d.python['version']} ({d.python['executable']})"),
        _row("platform", d.python["platform"]),
        _row("mlx", mlx),
        _row("mlx-vlm", mlx_vlm),
        _row("transformers", v["transformers"] or "-"),
        _row("wrapt", v["wrapt"] or "-"),
        _row(
            "mlx-vlm-safe",
            v["mlx-vlm-safe"] or "- (not installed: run from a checkout)",
        ),
        _row("device", d.device),
        _row("layout", f"{d.layout['kind']} (generate in {d.layout['home'] or '-'})"),
    ]
    if d.probes:
        out.append("probes\n")
        out += [
            _row(p.name, f"{p.outcome + ' ':<11}{p.detail}".rstrip()) for p in d.probes
        ]
    a = d.activation
    variable = "unset" if a.autopatch_variable is None else repr(a.autopatch_variable)
    out += [
        "patch\n",
        _row("this process", _this_process(d)),
        _row("fixes", ", ".join(f.name for f in d.patch.fixes) or "none"),
        _row("autopatch", f"{AUTOPATCH} {variable}"),
        _row(".pth hook", a.pth or "not installed (a checkout; use mlx-vlm-safe run)"),
    ]
    if d.memory is not None:
        out.append(_row("memory guard", d.memory["summary"]))
    if d.deadline is not None:
        out.append(_row("deadline", d.deadline["summary"]))
    if d.live is not None:
        lv = d.live
        result = (
            f"{lv.tokens} tokens, finish_reason {lv.finish_reason}, {lv.seconds:.2f} s;"
            " the same answer on a worker thread"
            if lv.ok
            else f"NOT RUN: cache folder {lv.cache} unusable"
            if lv.cache_unusable
            else f"FAILED: {lv.error}"
        )
        out.append(_row("live", result))
    if d.stats is not None:
        st, p50 = d.stats, d.stats["duration"]["p50"]
        out.append(
            _row(
                "calls here",
                f"{st['calls']}: {st['outcomes']['ok']} ok, "
                f"{st['outcomes']['error']} error, {st['shortened']} shortened"
                + ("" if p50 is None else f"; p50 {p50:.3f} s")
                + " (mlx_vlm_safe.stats())",
            )
        )
    out.append("verdict\n")
    out += [_wrap("  - ", line) for line in d.verdicts]
    out += [_wrap("  ! ", line) for line in d.warnings]
    out.append(f"status: {d.status} (exit {d.exit_code})\n")
    return "".join(out)
