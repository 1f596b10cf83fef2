"""Shared fixtures: the real mlx-vlm, the tiny checkpoint, patched/unpatched.

Every model test runs the installed mlx-vlm release for real (``load()``,
preprocessing, prefill, decoding) on the offline tiny checkpoint. Which
release is installed is the one parameter of the suite: CI runs it once per
release, in one environment each.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import mlx_vlm_safe
from mlx_vlm_safe._releases import Release, release_for
from mlx_vlm_safe.testing import build_tiny_checkpoint, tiny_image_path, tiny_prompt

REPO = pathlib.Path(__file__).resolve().parents[1]
NONE_DEFECT = "'NoneType' object has no attribute"


def pytest_report_header() -> list[str]:
    import importlib.metadata as md

    versions = []
    for dist in ("mlx-vlm", "mlx", "transformers", "wrapt"):
        try:
            versions.append(f"{dist} {md.version(dist)}")
        except md.PackageNotFoundError:
            versions.append(f"{dist} -")
    return ["mlx_vlm_safe real-release suite: " + ", ".join(versions)]


@dataclasses.dataclass(frozen=True)
class Tiny:
    """A loaded tiny model with what a real call needs."""

    model: Any
    processor: Any
    prompt: str
    image: list[str]

    def call(self, generate: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("image", self.image)
        kwargs.setdefault("max_tokens", 8)
        kwargs.setdefault("verbose", False)
        return generate(self.model, self.processor, self.prompt, **kwargs)

    def stream(self, stream_generate: Any, **kwargs: Any) -> Iterator[Any]:
        kwargs.setdefault("image", self.image)
        kwargs.setdefault("max_tokens", 8)
        result: Iterator[Any] = stream_generate(
            self.model, self.processor, self.prompt, **kwargs
        )
        return result


@pytest.fixture(scope="session")
def mlx_vlm() -> Any:
    import mlx_vlm as module

    return module


@pytest.fixture(scope="session")
def release(mlx_vlm: Any) -> Release:
    row = release_for(mlx_vlm.__version__)
    assert row is not None, f"mlx-vlm {mlx_vlm.__version__} is not in the table"
    return row


@pytest.fixture(scope="session")
def tiny(mlx_vlm: Any, tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    root = tmp_path_factory.mktemp("tiny")
    checkpoint = build_tiny_checkpoint(root / "checkpoint")
    model, processor = mlx_vlm.load(str(checkpoint))
    prompt = tiny_prompt(processor, model.config, "Describe the picture.")
    return Tiny(model, processor, prompt, [str(tiny_image_path(root))])


@pytest.fixture(autouse=True)
def _patched_around_each_test(mlx_vlm: Any) -> Iterator[None]:
    """Every test starts patched and leaves the process patched."""
    mlx_vlm_safe.patch()
    yield
    mlx_vlm_safe.patch()


@pytest.fixture
def unpatched() -> Iterator[None]:
    """Run the test body against the release exactly as it ships."""
    mlx_vlm_safe.unpatch()
    assert not mlx_vlm_safe.is_patched()
    yield
    mlx_vlm_safe.patch()


def run_python(
    code: str, *, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (import order matters there)."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), full_env.get("PYTHONPATH", "")) if p
    )
    for key, value in (env or {}).items():
        if value is None:  # pragma: no cover - typed away, kept for clarity
            full_env.pop(key, None)
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )
