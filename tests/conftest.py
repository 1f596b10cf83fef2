"""Shared fixtures: the real mlx-vlm, the tiny checkpoint, patched/unpatched.

Every model test runs the installed mlx-vlm release for real (``load()``,
preprocessing, prefill, decoding) on the offline tiny checkpoint. Which
release is installed is the one parameter of the suite: CI runs it once per
release, in one environment each (``noxfile.py``).

What to expect of the installed release is data: the row of
``tools/matrix.py`` for its ``__version__``, with the facts of that exact
version attached (``release.has("kwargs_dropped")`` ...). A CI
environment that is not one upstream release (a fork, a co-install) names
itself in ``MLX_VLM_SAFE_MATRIX_ENV`` and is expected to behave as its entry
in ``INSTALLS`` says.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import mlx_vlm_safe
from mlx_vlm_safe.testing import (
    build_tiny_checkpoint,
    plant_fault,
    tiny_image_path,
    tiny_prompt,
)
from tools.matrix import (
    Expected,
    Install,
    expected_release,
    install_named,
    mlx_device,
    streams_bound,
)

REPO = pathlib.Path(__file__).resolve().parents[1]
#: A text model whose KV cache grows fast, for the memory guard's tests:
#: 12 layers x 2 x 4 KV heads x 64 x 4 bytes = 24 KiB per position.
WIDE = {
    "hidden_size": 256,
    "num_hidden_layers": 12,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "head_dim": 64,
}
#: For the tests that cap the process's own memory (``RLIMIT_AS``): Linux
#: limits, and the model's memory in the host's address space. Where mlx runs
#: on CUDA the KV cache lives on the GPU and the budget is the device's
#: (``_device_room``; tested with a faked device in ``test_memory_load.py``,
#: measured by ``tools/measure_gpu_memory.py``); a host cap there starves
#: CUDA's own host buffers instead (H200: unpatched, ``RuntimeError ... out
#: of memory`` from cudaMallocHost, not a death).
HOST_MEMORY_CAP = pytest.mark.skipif(
    not sys.platform.startswith("linux") or mlx_device() == "cuda",
    reason="caps the host's memory: Linux, and not where the model lives on CUDA",
)
NONE_DEFECT = "'NoneType' object has no attribute"
#: Set by the nox sessions that are not one upstream release (``INSTALLS``).
MATRIX_ENV = "MLX_VLM_SAFE_MATRIX_ENV"


def pytest_report_header() -> list[str]:
    import importlib.metadata as md

    versions = []
    for dist in ("mlx-vlm", "mlx", "transformers", "wrapt"):
        try:
            versions.append(f"{dist} {md.version(dist)}")
        except md.PackageNotFoundError:
            versions.append(f"{dist} -")
    lines = ["mlx_vlm_safe real-release suite: " + ", ".join(versions)]
    if os.environ.get(MATRIX_ENV):
        lines.append(f"matrix environment: {os.environ[MATRIX_ENV]}")
    return lines


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
def release(mlx_vlm: Any) -> Expected:
    """The table's row for the installed code, with its version's facts."""
    env = os.environ.get(MATRIX_ENV)
    if env:
        assert install_named(env) is not None, f"{MATRIX_ENV}={env!r} not in INSTALLS"
    row = expected_release(mlx_vlm.__version__, env)
    assert row is not None, f"mlx-vlm {mlx_vlm.__version__} is not in the table"
    return row


@pytest.fixture(scope="session")
def bound(mlx_vlm: Any) -> bool:
    """Whether the installed mlx binds streams to the thread that made them."""
    import mlx.core as mx

    return streams_bound(mx.__version__, mlx_device())


@pytest.fixture(scope="session")
def install(mlx_vlm: Any) -> Install:
    """What is installed, as ``report()`` must describe it.

    An upstream release installs one distribution whose metadata matches the
    code; a fork or a co-install is described by its ``INSTALLS`` entry.
    """
    known = install_named(os.environ.get(MATRIX_ENV))
    if known is not None:
        return known
    version = mlx_vlm.__version__
    return Install(
        "upstream",
        (f"mlx-vlm=={version}",),
        version=version,
        metadata_version=version,
        distributions=("mlx-vlm",),
        behaves_like=version,
        note="one upstream release",
    )


@pytest.fixture(scope="session")
def exports(mlx_vlm: Any, release: Expected) -> Any:
    """The module that exports ``stream_generate`` on this release.

    Before 0.1.15 the package does not export it: callers use
    ``mlx_vlm.utils.stream_generate``. Read the attribute at call time
    (``exports.stream_generate``): the patch rebinds it.
    """
    if release.has("stream_not_exported"):
        return importlib.import_module("mlx_vlm.utils")
    return mlx_vlm


@contextlib.contextmanager
def _audio_less_load() -> Iterator[None]:
    """Test-only shim: let 0.2.0's ``load()`` load a model without audio.

    0.2.0's ``load_model()`` looks up ``model_class.AudioModel`` and
    ``model_config.audio_config`` and builds an ``AudioConfig`` for every
    model type, so it cannot load PaliGemma (or any model without an audio
    tower). The shim gives PaliGemma an inert ``AudioModel`` (no
    ``sanitize``: weights pass unchanged), a ``None`` ``audio_config``, and
    skips the "audio" module config. It touches only ``load()``'s path:
    ``generate``, ``stream_generate``, ``wired_limit`` and ``generate_step``
    stay the release's own, which is what the suite tests.
    """
    utils = importlib.import_module("mlx_vlm.utils")
    paligemma = importlib.import_module("mlx_vlm.models.paligemma")
    original = utils.update_module_configs

    def update_module_configs(
        model_config: Any, model_class: Any, config: Any, modules: list[str]
    ) -> Any:
        modules = [m for m in modules if m != "audio"]
        return original(model_config, model_class, config, modules)

    utils.update_module_configs = update_module_configs
    paligemma.AudioModel = object
    paligemma.ModelConfig.audio_config = None
    try:
        yield
    finally:
        utils.update_module_configs = original
        del paligemma.AudioModel
        del paligemma.ModelConfig.audio_config


@pytest.fixture(scope="session", autouse=True)
def _load_shim(release: Expected) -> Iterator[None]:
    """Apply the load() shim where the table says the release needs it."""
    if release.has("load_shim"):
        with _audio_less_load():
            yield
    else:
        yield


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


@contextlib.contextmanager
def counting_tokens() -> Iterator[Any]:
    """Count the tokens the real ``generate_step`` produces, changing nothing.

    A str result (0.1.x) does not say how many tokens it holds; the seam
    does. ``plant_fault(..., times=0)`` never fires: it only counts.
    """
    with plant_fault(RuntimeError("never raised"), after_tokens=None, times=0) as rec:
        yield rec


def temperature_keyword(mlx_vlm: Any) -> str:
    """The installed release's name for the sampling temperature.

    ``temperature``, or ``temp`` where ``generate_step`` names no
    ``temperature`` (0.1.x before 0.1.21): there an unknown ``temperature``
    lands in its ``**kwargs`` and is ignored, so a str one is no error.
    """
    from mlx_vlm_safe._patch import locate

    accepted = locate(mlx_vlm).accepted_kwargs or ()
    return "temperature" if "temperature" in accepted else "temp"


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


def run_mypy(code: str, tmp_path: pathlib.Path) -> str:
    """Type-check ``code`` with ``mypy --strict``; its report (stdout)."""
    snippet = tmp_path / "typing_snippet.py"
    snippet.write_text(code)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
         "--cache-dir", str(tmp_path / "cache"), str(snippet)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return result.stdout
