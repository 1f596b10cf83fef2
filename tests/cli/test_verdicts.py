"""``doctor``'s verdicts, read from the fixes' specs, for every row of the table.

No interpreter to start and no model: ``_verdicts`` is given each release
range's verdicts from the table (``tools/matrix.py``), for an mlx that binds
streams to threads and one that shares them, and must say each defect found
in its fix's own sentence, answer the two questions it always answers once,
and name every fix applied when it says the release is fixed here.
"""

from __future__ import annotations

import pytest

from mlx_vlm_safe._cli import _verdicts
from mlx_vlm_safe._patch import FIXES
from tools.matrix import EXPECTED, Expected

CASES = [(row, bound) for row in EXPECTED for bound in (True, False)]
IDS = [f"{row.first}-{'bound' if bound else 'shared'}" for row, bound in CASES]


@pytest.mark.parametrize(("row", "bound"), CASES, ids=IDS)
def test_each_defect_found_is_said_in_its_fixs_sentence(
    row: Expected, bound: bool
) -> None:
    verdicts = row.verdicts_on(bound)
    lines = _verdicts.affected("cpu", row.first, verdicts)
    where = f"mlx-vlm {row.first} on cpu"
    found = [spec for spec in FIXES if spec.doctor and spec.found(verdicts)]
    for spec in found:
        assert spec.sentence(where) in lines, spec.name
    assert lines[0].startswith("Affected by the NoneType/token crash:")
    assert lines[-1].startswith("generate() from other threads")
    assert (
        len(lines)
        == len({*lines})
        == 2
        + len(found)
        - sum(1 for s in found if {"wired_limit", "thread_stream"} & set(s.when))
    )


@pytest.mark.parametrize(("row", "bound"), CASES, ids=IDS)
def test_fixed_here_names_every_fix_applied(row: Expected, bound: bool) -> None:
    applied = set(row.fixes_on(bound))
    needed = _verdicts.needed(row.verdicts_on(bound))
    assert needed <= applied
    line = _verdicts.fixed_here("patched", needed, applied)
    if needed:
        assert line.startswith("Fixed in this process")
        named = line.split("applied ", 1)[1].split(";")[0].split(", ")
        assert named == [spec.name for spec in FIXES if spec.name in applied]


def test_upstream_names_each_fix_release_and_where_the_installed_one_stands() -> None:
    releases = {spec.fixed_upstream_in for spec in FIXES} - {None}
    line = _verdicts.upstream("0.5.0")
    for spec in FIXES:
        if spec.fixed_upstream_in:
            assert spec.name in line
    assert all(release in line for release in releases if release)
    assert line.endswith(
        "The installed 0.5.0 has those of 0.1.10 and 0.3.11 and 0.5.0 only."
    )
    assert _verdicts.upstream("0.3.5").endswith("has those of 0.1.10 only.")
    assert _verdicts.upstream("0.1.7").endswith("has none of them.")
    assert _verdicts.upstream("0.7.10").endswith("has all of them.")
