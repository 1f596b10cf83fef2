"""The retry engine's tests start and end with the default configuration."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mlx_vlm_safe._retry import reset_config, set_testing


@pytest.fixture(autouse=True)
def _clean_config() -> Iterator[None]:
    reset_config()
    set_testing(False)
    yield
    reset_config()
    set_testing(False)
