"""docs/api.md documents every public name, and says what the code says now.

The page is generated (``python tools/api_reference.py --write``) from
``mlx_vlm_safe._PUBLIC`` and ``mlx_vlm_safe.testing.__all__``: a public name
added without regenerating it, or a changed signature or docstring, fails
here. Every public name must have a docstring.
"""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest

import mlx_vlm_safe
import mlx_vlm_safe.testing
from tools import api_reference
from tools.doc_pages import ROOT

WRITE = "run `python tools/api_reference.py --write` and commit docs/api.md"


def _public() -> set[str]:
    listed = {n for names in mlx_vlm_safe._PUBLIC.values() for n in names}
    return listed | set(mlx_vlm_safe.testing.__all__)


def _documented(text: str) -> set[str]:
    return set(re.findall(r"^### `(\w+)`$", text, re.M))


def test_every_public_name_is_on_the_page() -> None:
    text = api_reference.PAGE.read_text(encoding="utf-8")
    missing = _public() - _documented(text)
    assert not missing, f"docs/api.md lacks {sorted(missing)}: {WRITE}"
    extra = _documented(text) - _public()
    assert not extra, f"docs/api.md documents names no longer public: {extra}"


def test_the_page_is_what_the_code_makes() -> None:
    text = api_reference.PAGE.read_text(encoding="utf-8")
    assert text == api_reference.page(), f"docs/api.md is stale: {WRITE}"


def test_the_check_mode_agrees() -> None:
    """``--check`` is what CI or a pre-commit hook can run alone."""
    proc = subprocess.run(
        [sys.executable, "tools/api_reference.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_a_new_public_name_makes_the_page_stale(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Adding a name to ``_PUBLIC`` is enough for the generator to pick it up."""

    def histogram() -> dict[str, int]:
        """Counters since start-up (a stand-in for a name added later)."""
        return {}

    public = dict(mlx_vlm_safe._PUBLIC)
    public["._histogram"] = ("histogram",)
    monkeypatch.setattr(mlx_vlm_safe, "_PUBLIC", public)
    monkeypatch.setattr(mlx_vlm_safe, "histogram", histogram, raising=False)
    made = api_reference.page()
    assert "histogram" in _documented(made)
    assert "histogram() -> dict[str, int]" in made
    on_disk = api_reference.PAGE.read_text(encoding="utf-8")
    assert "histogram" not in _documented(on_disk)
    assert made != on_disk


def test_a_public_name_without_a_docstring_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def undocumented() -> None:
        pass

    public: dict[str, Any] = dict(mlx_vlm_safe._PUBLIC)
    public["._x"] = ("undocumented",)
    monkeypatch.setattr(mlx_vlm_safe, "_PUBLIC", public)
    monkeypatch.setattr(mlx_vlm_safe, "undocumented", undocumented, raising=False)
    with pytest.raises(ValueError, match="no docstring"):
        api_reference.page()


def test_signatures_are_rendered_as_written() -> None:
    """Keyword-only and positional-only markers appear once, in place."""

    def sample(a: int, /, b: str = "x", *, c: bool = False, **kw: object) -> None:
        """A sample."""

    text = api_reference.signature(sample, "sample")
    assert text == (
        "sample(a: int, /, b: str = 'x', *, c: bool = False, **kw: object) -> None"
    )
