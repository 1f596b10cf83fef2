"""README's compatibility table is generated from the release table."""

from __future__ import annotations

import pathlib

from mlx_vlm_safe._releases import (
    RELEASES,
    markdown_table,
    readme_section,
    replace_readme_section,
)

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
FIX = "run `python -m mlx_vlm_safe._releases --write` and commit README.md"


def test_readme_compatibility_table_is_up_to_date() -> None:
    """The table and the "Tested in CI" line are exactly what the table makes."""
    text = README.read_text(encoding="utf-8")
    assert readme_section() in text, f"README.md's table is out of date: {FIX}"
    assert replace_readme_section(text) == text, FIX


def test_every_range_has_a_row_that_says_what_ci_ran() -> None:
    """One row per range; each says which releases CI ran, or plainly that none."""
    rows = markdown_table().splitlines()[2:]
    assert len(rows) == len(RELEASES)
    for row, release in zip(rows, RELEASES, strict=True):
        tested = row.rstrip(" |").rsplit(" | ", 1)[-1]
        if release.tested:
            assert all(v in tested for v in release.tested), row
            assert "checkpoint" in tested, row
        else:
            assert tested.startswith("not tested in CI"), row
