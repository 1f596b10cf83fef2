"""Test sessions: lint, and the real-release suite once per mlx-vlm release.

``nox`` runs the default sessions; ``nox -s "tests(mlx_vlm='0.3.5')"`` runs
one release. Each release gets its own environment (uv makes them cheap: the
wheels come from uv's cache after the first run), because a release is the
one parameter of the suite: the tests read what to expect for it from
``mlx_vlm_safe/_releases.py``.
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "uv"
nox.options.reuse_existing_virtualenvs = False
nox.options.error_on_missing_interpreters = True

PYTHON = "3.11"

#: mlx-vlm release -> extra pins it needs, each with the reason beside it.
RELEASES: dict[str, list[str]] = {
    "0.3.5": [],  # affected: wired_limit swallows every exception off Metal
    "0.7.10": [],  # newest release at the time of writing
}


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff (lint + format) and mypy --strict over the package."""
    session.install("-e", ".[dev]", "mlx[cpu]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


@nox.session(python=PYTHON)
@nox.parametrize("mlx_vlm", list(RELEASES))
def tests(session: nox.Session, mlx_vlm: str) -> None:
    """The whole suite against one real mlx-vlm release on CPU."""
    requirement = "mlx-vlm" if mlx_vlm == "latest" else f"mlx-vlm=={mlx_vlm}"
    session.install("mlx[cpu]", requirement, *RELEASES[mlx_vlm], "-e", ".[tests]")
    session.run("python", "-m", "pytest", "-q", *session.posargs)
