"""The documentation pages: README.md and every ``docs/*.md``, as one set.

The generated blocks (samples, tables, the API reference) may live on any
page, and every page's Python examples run in the suite
(``tests/e2e/test_readme.py``). The tools find a generated block by its
marker, so moving a block from one page to another needs no tool change.
"""

from __future__ import annotations

import os
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def pages() -> list[pathlib.Path]:
    """README.md first, then ``docs/*.md`` by name."""
    return [README, *sorted(DOCS.glob("*.md"))]


def page_with(marker: str) -> pathlib.Path:
    """The one page that holds ``marker``.

    Raises:
        LookupError: no page holds it, or more than one does (a generated block
            written in two places would let one copy go stale unseen).

    """
    found = [p for p in pages() if marker in p.read_text(encoding="utf-8")]
    if len(found) != 1:
        names = ", ".join(os.path.relpath(p, ROOT) for p in found) or "no page"
        raise LookupError(f"{marker!r} must be on exactly one page; found: {names}")
    return found[0]
