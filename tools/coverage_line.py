"""The README's coverage line, made from ``noxfile.py``'s ``ENVIRONMENTS``.

``python tools/coverage_line.py`` prints the line; ``--write`` puts it into
README.md between the ``<!-- coverage -->`` markers; ``tests/e2e/test_readme.py``
checks that the README holds what this makes. The noxfile is the one list of
what CI runs (which Python, which mlx-vlm, which mlx), so the line is read
from it rather than written by hand.

The noxfile imports ``nox``; only its data is read here, so a stand-in whose
decorators change nothing takes nox's place while it loads.
"""

from __future__ import annotations

import functools
import importlib.util
import pathlib
import re
import sys
import types
from collections.abc import Mapping
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
NOXFILE = ROOT / "noxfile.py"
OPEN, CLOSE = "<!-- coverage -->", "<!-- /coverage -->"
DASH = "\N{EN DASH}"  # a range, as the README's other generated lines write it
_SECTION = re.compile(re.escape(OPEN) + r"\n.*?\n" + re.escape(CLOSE), re.DOTALL)


class _NoxStandIn(types.ModuleType):
    """Enough of ``nox`` for the noxfile to load: decorators that change nothing."""

    def __init__(self) -> None:
        super().__init__("nox")
        self.options = types.SimpleNamespace()
        self.Session = object

    def session(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return args[0]
        return lambda func: func

    def parametrize(self, *args: Any, **kwargs: Any) -> Any:
        return lambda func: func

    def param(self, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        return args


@functools.cache
def load_noxfile() -> types.ModuleType:
    """``noxfile.py`` as a module, its data only: ``nox`` is a stand-in meanwhile.

    Real nox would register the sessions again in this process (a warning
    now, an error in a later nox), and the test environments lack it anyway.
    """
    real = sys.modules.get("nox")
    sys.modules["nox"] = _NoxStandIn()
    try:
        spec = importlib.util.spec_from_file_location("_mlx_vlm_safe_noxfile", NOXFILE)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    finally:
        if real is None:
            del sys.modules["nox"]
        else:
            sys.modules["nox"] = real
    return module


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split("."))


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def coverage_line(environments: Mapping[str, Any], default_python: str) -> str:
    """One sentence: the Pythons, and the environments each kind adds."""
    pythons = sorted({env.python for env in environments.values()}, key=_key)
    upstream = sorted((e for e in environments if re.fullmatch(r"[\d.]+", e)), key=_key)
    other: dict[str, list[str]] = {}  # another Python -> the releases on it
    for env_id in upstream:
        if environments[env_id].python != default_python:
            other.setdefault(environments[env_id].python, []).append(env_id)
    axis: dict[str, list[str]] = {}
    for env_id, env in environments.items():
        found = re.fullmatch(r"([\d.]+)-py[\d.]+", env_id)
        if found:
            axis.setdefault(found[1], []).append(env.python)
    mlx_axis = [e for e in environments if re.fullmatch(r"[\d.]+-mlx[\d.]+", e)]
    on_axis = {f"{r}-py{p}" for r, ps in axis.items() for p in ps}
    rest = [e for e in environments if e not in {*upstream, *mlx_axis, *on_axis}]
    parts = [
        f"{len(upstream)} mlx-vlm releases ({upstream[0]}{DASH}{upstream[-1]}) on "
        f"Python {default_python}"
        + (
            " (" + _and([f"{p} for {_and(e)}" for p, e in other.items()]) + ")"
            if other
            else ""
        ),
        _and(list(axis))
        + " also on Python "
        + _and(sorted({p for ps in axis.values() for p in ps}, key=_key)),
        f"{len(mlx_axis)} on an older mlx",
        f"{len(rest)} more: {', '.join(rest)}",
    ]
    return (
        f"Tested on Python {pythons[0]}{DASH}{pythons[-1]}, in {len(environments)} "
        f"mlx-vlm environments (`nox -l`): " + "; ".join(parts) + "."
    )


def readme_line() -> str:
    """The line the README must hold, from the noxfile as it is now."""
    nox_module = load_noxfile()
    return coverage_line(nox_module.ENVIRONMENTS, nox_module.PYTHON)


def section(line: str) -> str:
    """The marked block that holds ``line``."""
    return f"{OPEN}\n{line}\n{CLOSE}"


def replace_section(readme: str, line: str) -> str:
    """``readme`` with its coverage block holding ``line``."""
    return _SECTION.sub(lambda _: section(line), readme)


def main() -> None:
    """Print the line, or (``--write``) put it into README.md."""
    line = readme_line()
    if sys.argv[1:] == ["--write"]:
        README.write_text(replace_section(README.read_text(), line))
    else:
        print(line)


if __name__ == "__main__":
    main()
