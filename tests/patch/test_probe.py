"""Behaviour probes: the real release is classified as measured, and every
variant of wired_limit is classified by what it does."""

from __future__ import annotations

import contextlib
import itertools
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import mlx_vlm_safe
from mlx_vlm_safe._patch import locate
from mlx_vlm_safe._patch._fixes._wired_limit import probe_wired_limit
from mlx_vlm_safe._patch._probes import probe_empty_stream
from mlx_vlm_safe._releases import KNOWN_NEWEST, RELEASES, release_for
from tools.matrix import (
    EXPECTED,
    FACTS,
    INSTALLS,
    Expected,
    expected_release,
)


def test_installed_release_is_classified_as_the_table_says(
    mlx_vlm: Any, release: Expected, bound: bool
) -> None:
    """Probes on the loaded code agree with the measured matrix for this release."""
    report = mlx_vlm_safe.report()
    assert report.layout == release.layout
    found = {p.name: p.outcome for p in report.probes}
    assert found == release.verdicts_on(bound)  # every probe, each in the table
    assert report.fix_names() == release.fixes_on(bound)


def test_layout_points_at_the_real_home(mlx_vlm: Any, release: Expected) -> None:
    """locate() finds the originals behind our wrappers, in the right module."""
    located = locate(sys.modules["mlx_vlm"])
    homes = {
        "utils": "mlx_vlm.utils",
        "module": "mlx_vlm.generate",
        "package": "mlx_vlm.generate.dispatch",
    }
    assert located.home == homes[release.layout]
    assert located.generate is not None
    assert not getattr(located.generate, "__mlx_vlm_safe__", False)
    assert "max_tokens" in located.defaults
    assert located.accepted_kwargs is not None
    assert "max_tokens" in located.accepted_kwargs


# Each variant below copies the control flow of one upstream release family.


@contextlib.contextmanager
def _variant_a(model: Any, streams: Any = None) -> Iterator[None]:
    """0.1.22-0.3.1: device_info() unconditionally; fails on entry off Metal."""
    info: dict[str, int] = {}
    _ = info["max_recommended_working_set_size"]
    yield


@contextlib.contextmanager
def _variant_b(model: Any, streams: Any = None) -> Iterator[None]:
    """0.3.2-0.3.10 off Metal: ``finally: return`` swallows everything."""
    try:
        yield
    finally:
        return  # noqa: B012 - this is the defect being modelled


@contextlib.contextmanager
def _variant_c(model: Any, streams: Any = None) -> Iterator[None]:
    """0.3.11+: a plain yield; exceptions propagate."""
    yield


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        (_variant_a, "fails_on_entry"),
        (_variant_b, "swallows"),
        (_variant_c, "propagates"),
        (None, "absent"),
    ],
)
def test_wired_limit_variants(variant: Any, expected: str) -> None:
    """The probe tells the three upstream variants apart by behaviour alone."""
    assert probe_wired_limit(variant).outcome == expected


def test_empty_stream_probe_does_not_touch_the_module(mlx_vlm: Any) -> None:
    """The probe runs a clone: the real module global is never swapped."""
    located = locate(sys.modules["mlx_vlm"])
    assert located.generate is not None
    scope = located.generate.__globals__  # type: ignore[attr-defined]
    before = scope["stream_generate"]
    probe_empty_stream(located.generate)
    assert scope["stream_generate"] is before


def test_release_table_is_ordered_and_gapless() -> None:
    """Every range follows the previous one; lookups land where expected."""
    from packaging.version import Version

    for earlier, later in itertools.pairwise(RELEASES):
        assert Version(earlier.last) < Version(later.first)
    assert release_for("0.3.4") is release_for("0.3.10")
    assert release_for("0.3.4") is not None
    assert release_for("0.3.4").verdicts["wired_limit"] == "swallows"  # type: ignore[union-attr]
    assert release_for("9.9.9") is None
    assert release_for("not a version") is None


def test_a_fact_a_fix_repairs_is_gone_once_patched() -> None:
    """``Fact.fixed_by``: where the table calls for that fix, patched calls lose
    the fact (``has``), the release alone keeps it (``shipped``)."""
    import dataclasses

    for fact in FACTS:
        assert not fact.fixed_by or fact.defect, fact  # a fix repairs a defect
    row = next(r for r in EXPECTED if r.tested)
    version = row.tested[0]
    applied = row.fixes_on(True)
    assert applied, row
    fact = dataclasses.replace(FACTS[0], first=version, last=version, name="x")
    for fixed_by, gone in (("", False), (applied[0], True), ("no such fix", False)):
        at = dataclasses.replace(
            row, facts=(dataclasses.replace(fact, fixed_by=fixed_by),)
        )
        assert at.shipped("x"), fixed_by
        assert at.has("x") is not gone, fixed_by


def test_facts_installs_and_ci_releases_are_consistent() -> None:
    """Facts lie inside the table; CI releases and forks map to their rows."""
    from packaging.version import Version

    first, last = Version(RELEASES[0].first), Version(RELEASES[-1].last)
    for fact in FACTS:
        assert first <= Version(fact.first) <= Version(fact.last) <= last, fact
    assert RELEASES[-1].last == KNOWN_NEWEST
    for row, runtime in zip(EXPECTED, RELEASES, strict=True):
        # the runtime row's columns, unchanged, plus what CI runs in the range
        assert release_for(row.first) is runtime, row
        assert all(getattr(row, f) == getattr(runtime, f) for f in vars(runtime)), row
        assert all(row.contains(v) for v in row.tested), row
        assert bool(row.tested) <= bool(row.checkpoint), row
    for install in INSTALLS:
        assert release_for(install.behaves_like) is not None, install
        assert expected_release(install.version, install.name) == (install.release())
    # the facts of one version, attached by at()
    # (as the release ships: a fix may repair a fact for patched calls, see
    # test_a_fact_a_fix_repairs_is_gone_once_patched)
    assert expected_release("0.1.7").shipped("kwargs_dropped")  # type: ignore[union-attr]
    assert not expected_release("0.1.10").shipped("kwargs_dropped")  # type: ignore[union-attr]
    assert expected_release("0.1.7").tokens_for(8, patched=False) == 256  # type: ignore[union-attr]
    assert expected_release("0.3.5").tokens_for(8) == 8  # type: ignore[union-attr]
    # a release newer than the table is expected to behave like the newest row
    assert expected_release("99.0.0") == EXPECTED[-1].at("99.0.0")
    assert expected_release("not a version") is None
