"""A pytest session started patched (``run`` or the ``.pth`` hook) stays quiet.

pytest marks the top-level modules of every distribution that has a
``pytest11`` entry point for assertion rewriting, and warns about each one
already imported. ``mlx-vlm-safe run`` and ``MLX_VLM_SAFE_AUTOPATCH=1`` import
them before pytest starts, so a project with ``-W error`` (or
``filterwarnings = error``) aborted before collecting a single test. The
modules say ``PYTEST_DONT_REWRITE`` in their docstring; these tests run a tiny
real pytest session both ways to hold it.
"""

from __future__ import annotations

import importlib
import pathlib
import sys

import pytest
from _pytest.assertion.rewrite import AssertionRewriter

from ._helpers import REPO, cli_run, needs_install, python

#: One test that needs the plugin (its fixture), the patch active at start
#: and pytest's own assertion rewriting of the test module.
_TEST_MODULE = """
import sys

def test_patched_from_the_start(mlx_vlm_safe_testing):
    import mlx_vlm_safe
    assert mlx_vlm_safe.is_testing()

def test_asserts_are_still_rewritten():
    value = [1, 2]
    try:
        assert value == [1, 3]
    except AssertionError as exc:
        assert "[1, 2] == [1, 3]" in str(exc)  # pytest's rewritten message
"""
#: Our own ini file, so that the repository's pytest options do not apply.
_INI = "[pytest]\naddopts = -p no:cacheprovider\n"


def _session(tmp_path: pathlib.Path) -> list[str]:
    (tmp_path / "pytest.ini").write_text(_INI)
    (tmp_path / "test_tiny.py").write_text(_TEST_MODULE)
    return [sys.executable, "-m", "pytest", "-W", "error", "-q", str(tmp_path)]


def _assert_quiet(stdout: str, stderr: str) -> None:
    assert "2 passed" in stdout, stdout + stderr
    assert "Warning" not in stdout + stderr, stdout + stderr


@pytest.mark.subprocess
def test_pytest_under_run_with_warnings_as_errors(tmp_path: pathlib.Path) -> None:
    proc = cli_run("run", "--", *_session(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _assert_quiet(proc.stdout, proc.stderr)


@needs_install
@pytest.mark.subprocess
def test_pytest_under_the_autopatch_hook_with_warnings_as_errors(
    tmp_path: pathlib.Path,
) -> None:
    _, *args = _session(tmp_path)
    proc = python(*args, extra={"MLX_VLM_SAFE_AUTOPATCH": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _assert_quiet(proc.stdout, proc.stderr)


#: The top-level modules the wheel ships that may be imported before pytest
#: starts (the plugin module itself is imported by pytest, after marking).
_EARLY = ("mlx_vlm_safe", "mlx_vlm_safe._bootstrap._mlx_vlm_safe_autopatch")


@pytest.mark.parametrize("name", _EARLY)
def test_modules_imported_before_pytest_opt_out_of_rewriting(name: str) -> None:
    """A regular wheel install marks ``mlx_vlm_safe`` too (an editable one not)."""
    module = importlib.import_module(name)
    assert AssertionRewriter.is_rewrite_disabled(module.__doc__ or "")
    assert pathlib.Path(module.__file__ or "").is_relative_to(REPO)
