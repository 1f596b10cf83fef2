"""A release the library has never seen: the generic layer and one warning.

These tests alter what the loaded mlx-vlm *looks like* (its version string,
or where ``generate`` lives) in this process, then patch again: the library
must classify by behaviour, warn once, and never crash.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

import mlx_vlm_safe

from ..conftest import Tiny


@pytest.fixture
def repatch() -> Iterator[None]:
    mlx_vlm_safe.unpatch()
    yield
    mlx_vlm_safe.unpatch()
    mlx_vlm_safe.patch()


def test_newer_version_gets_its_probed_fixes_and_one_warning(
    mlx_vlm: Any,
    tiny: Tiny,
    repatch: None,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """mlx-vlm 9.0.0 (unknown): the same fixes its behaviour calls for, one warning."""
    mlx_vlm_safe.patch()
    expected = mlx_vlm_safe.report().fix_names()
    mlx_vlm_safe.unpatch()
    monkeypatch.setattr(mlx_vlm, "__version__", "9.0.0")
    with caplog.at_level(logging.WARNING, logger="mlx_vlm_safe"):
        report = mlx_vlm_safe.patch()
        mlx_vlm_safe.unpatch()
        mlx_vlm_safe.patch()
    warnings = [r for r in caplog.records if "9.0.0" in r.getMessage()]
    assert len(warnings) == 1
    assert "newer than or unlike" in warnings[0].getMessage()
    assert report.fix_names() == expected
    assert tiny.call(mlx_vlm.generate) is not None


class _Callable:
    """A future ``generate`` that is not a plain function and returns None."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        self.calls += 1


def test_unknown_layout_gets_the_generic_layer(
    mlx_vlm: Any,
    repatch: None,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """generate moved somewhere unknown: still never None, one warning, no crash."""
    future = _Callable()
    monkeypatch.setattr(mlx_vlm, "generate", future)
    monkeypatch.delattr("mlx_vlm.utils.generate", raising=False)
    with caplog.at_level(logging.WARNING, logger="mlx_vlm_safe"):
        report = mlx_vlm_safe.patch()
    assert report.layout == "unknown"
    assert report.status == "patched"
    assert mlx_vlm.generate is not future
    assert mlx_vlm.generate("model", "processor", "prompt") == ""
    assert future.calls >= 1
    assert any("unlike the releases" in r.getMessage() for r in caplog.records)
    mlx_vlm_safe.unpatch()
    assert mlx_vlm.generate is future


def test_nothing_to_patch_warns_and_strict_raises(
    mlx_vlm: Any,
    repatch: None,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No callable generate at all: a warning, and PatchError under strict=True."""
    monkeypatch.setattr(mlx_vlm, "generate", None)
    monkeypatch.delattr("mlx_vlm.utils.generate", raising=False)
    with pytest.raises(mlx_vlm_safe.PatchError, match="not where any known release"):
        mlx_vlm_safe.patch(strict=True)
    with caplog.at_level(logging.WARNING, logger="mlx_vlm_safe"):
        mlx_vlm_safe.patch()
    assert any("nothing was patched" in r.getMessage() for r in caplog.records)
