"""The pytest plugin's entry point: fixtures, and nothing imported until used.

Registered through the ``pytest11`` entry point, so every pytest run in an
environment with mlx_vlm_safe installed loads this module. It therefore lives
*outside* the package (the wheel copies it to the top of site-packages, like
``_mlx_vlm_safe_autopatch``): importing anything under ``mlx_vlm_safe`` runs
the package's import side effect, the patch, and a test session must not
patch mlx-vlm unless a test asks for it. Tests that pass only because pytest
loaded a plugin, while production crashes, would be the worst outcome.

So this module imports pytest and nothing else: no hooks, no options, no
autouse fixtures. A test that uses one of these fixtures imports
``mlx_vlm_safe.testing`` and with it the patch; that is what it asked for.

* ``mlx_vlm_safe_tiny_model`` (session): the ~0.5 MB tiny checkpoint, built
  in pytest's temporary directory and loaded with the real ``mlx_vlm.load()``.
* ``mlx_vlm_safe_faults``: plants faults into the real generation for the
  rest of the test (see ``mlx_vlm_safe.testing.plant_fault``).
* ``mlx_vlm_safe_testing``: retries run once and never sleep, for the test.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from mlx_vlm_safe.testing._plugin import Faults, TinyModel


@pytest.fixture(scope="session")
def mlx_vlm_safe_tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """The tiny checkpoint, built once per session and loaded for real."""
    from mlx_vlm_safe.testing._plugin import load_tiny_model

    return load_tiny_model(tmp_path_factory.mktemp("mlx_vlm_safe_tiny"))


@pytest.fixture
def mlx_vlm_safe_faults() -> Iterator[Faults]:
    """Plant faults into the real generation; all are removed after the test."""
    from mlx_vlm_safe.testing._plugin import Faults

    with contextlib.ExitStack() as stack:
        yield Faults(stack)


@pytest.fixture
def mlx_vlm_safe_testing() -> Iterator[None]:
    """Retries run once and never sleep (``set_testing(True)``) for the test."""
    from mlx_vlm_safe import set_testing

    with set_testing(True):
        yield
