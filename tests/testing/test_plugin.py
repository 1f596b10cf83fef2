"""The pytest plugin: registered by entry point, off unless a fixture is used.

Each check runs pytest (or Python) in a fresh interpreter, because what a
plugin imports at start-up is only visible there. Plugin autoloading is
switched off and the plugin named with ``-p``, so the same command works
whether or not this checkout is installed (installed, the entry point would
load it a second time). The plugin is a top-level module that the wheel copies
out of ``mlx_vlm_safe/_bootstrap``; here it is copied to a folder of its own
on ``PYTHONPATH`` (that folder, unlike ``_bootstrap``, holds no
``sitecustomize``).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
PLUGIN = "_mlx_vlm_safe_pytest"
SOURCE = REPO / "mlx_vlm_safe" / "_bootstrap" / f"{PLUGIN}.py"

pytestmark = pytest.mark.subprocess


def _run(args: list[str], cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    plugin_dir = cwd / "plugin"
    plugin_dir.mkdir(exist_ok=True)
    shutil.copy(SOURCE, plugin_dir)
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(plugin_dir), str(REPO), env.get("PYTHONPATH", "")) if p
    )
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
        check=False,
    )


def _pytest(tmp_path: pathlib.Path, body: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_user.py").write_text(textwrap.dedent(body))
    return _run(
        ["-m", "pytest", "-q", "-p", PLUGIN, "-p", "no:cacheprovider", "test_user.py"],
        tmp_path,
    )


def test_entry_point_names_the_plugin_module() -> None:
    """pyproject registers the module that holds the fixtures."""
    tomllib = pytest.importorskip("tomllib")
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert data["project"]["entry-points"]["pytest11"] == {"mlx_vlm_safe": PLUGIN}


def test_importing_the_plugin_imports_nothing_of_ours_or_mlx(
    tmp_path: pathlib.Path,
) -> None:
    """Every pytest run in an environment with mlx_vlm_safe imports the plugin:
    it must not import the package (that would patch mlx-vlm in every test
    session), nor mlx."""
    result = _run(
        [
            "-c",
            f"import sys, {PLUGIN}\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('mlx', 'mlx_vlm', 'mlx_vlm_safe', 'numpy', 'transformers')))",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_plugin_is_off_unless_a_fixture_is_used(tmp_path: pathlib.Path) -> None:
    """A test that uses no fixture of ours: mlx-vlm is not patched, it runs as is."""
    result = _pytest(
        tmp_path,
        """
        import sys

        def test_untouched():
            assert "mlx_vlm_safe" not in sys.modules
            import mlx_vlm

            assert not hasattr(mlx_vlm.generate, "__mlx_vlm_safe__")
            assert "mlx_vlm_safe" not in sys.modules
        """,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_fixtures_plant_faults_into_the_tiny_model(tmp_path: pathlib.Path) -> None:
    """The documented example, and each fixture undoing itself after the test."""
    result = _pytest(
        tmp_path,
        """
        import pytest
        import mlx_vlm_safe
        from mlx_vlm_safe.testing import FaultPlan

        def test_out_of_memory_during_prefill(
            mlx_vlm_safe_tiny_model, mlx_vlm_safe_faults, mlx_vlm_safe_testing
        ):
            planted = MemoryError("oom")
            fault = mlx_vlm_safe_faults.plant(planted, during_prefill=True)
            with pytest.raises(MemoryError) as info:
                mlx_vlm_safe_tiny_model.generate(max_tokens=4)
            assert info.value is planted
            assert (fault.calls, fault.fired) == (1, 1)  # testing: no retry

        def test_plan_and_empty_stream(mlx_vlm_safe_tiny_model, mlx_vlm_safe_faults):
            mlx_vlm_safe.configure(wait_base=0, wait_max=0)
            fault = mlx_vlm_safe_faults.plan(FaultPlan(MemoryError, "prefill", 1))
            result = mlx_vlm_safe_tiny_model.generate(max_tokens=3)
            assert result.generation_tokens == 3 and fault.calls == 2
            mlx_vlm_safe_faults.clear()
            mlx_vlm_safe_faults.empty_stream()
            items = list(mlx_vlm_safe_tiny_model.stream())
            assert len(items) <= 1  # one empty item where generate() needs it
            assert all(getattr(item, "text", item) == "" for item in items)
            mlx_vlm_safe.reset_config()

        def test_everything_was_undone(mlx_vlm_safe_tiny_model):
            assert not mlx_vlm_safe.is_testing()
            items = list(mlx_vlm_safe_tiny_model.stream(max_tokens=2))
            assert items[-1].generation_tokens == 2
            assert "TinyModel(" in repr(mlx_vlm_safe_tiny_model)
        """,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
