"""Fixtures of the command-line tests."""

from __future__ import annotations

import pathlib

import pytest

from mlx_vlm_safe.testing import build_tiny_checkpoint, tiny_image_path


@pytest.fixture(scope="module")
def assets(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[pathlib.Path, pathlib.Path]:
    root = tmp_path_factory.mktemp("cli-assets")
    return build_tiny_checkpoint(root / "checkpoint"), tiny_image_path(root)
