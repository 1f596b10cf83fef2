"""``mlx_vlm_safe.configure()``: retry and memory settings in one call, all or none.

The retry engine (``_retry``) and the memory guard (``_patch._memory``) own
their settings; ``_configure`` is the one public entry point over both.
"""

from __future__ import annotations

import inspect
import pathlib
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

import mlx_vlm_safe
from mlx_vlm_safe._patch import memory_snapshot
from mlx_vlm_safe._patch._memory import settings as memory_settings
from tests.conftest import run_mypy


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    mlx_vlm_safe.reset_config()
    yield
    mlx_vlm_safe.reset_config()


def _state() -> tuple[object, object]:
    """The settings in force (not the live budget, which moves with the system)."""
    return mlx_vlm_safe.get_policy(), memory_settings()


def test_both_kinds_of_setting_apply_in_one_call() -> None:
    policy = mlx_vlm_safe.configure(attempts=5, memory_limit="64MiB")
    assert policy.attempts == mlx_vlm_safe.get_policy().attempts == 5
    assert memory_snapshot()["sources"]["memory_limit"] == 64 * 2**20


# Each pair: one valid setting of one kind, one invalid setting of the other.
HALF_BAD = [
    ({"memory_limit": "64MiB", "attempts": 0}, "attempts"),
    ({"memory_limit": "64MiB", "wait_base": -1.0}, "wait_base"),
    ({"attempts": 5, "memory_limit": "lots"}, "memory_limit"),
    ({"attempts": 5, "memory_margin": "-3"}, "memory_margin"),
]


@pytest.mark.parametrize(("changes", "bad"), HALF_BAD)
def test_an_invalid_setting_changes_nothing_at_all(
    changes: dict[str, object], bad: str
) -> None:
    before = _state()
    with pytest.raises(ValueError, match=bad):
        mlx_vlm_safe.configure(**changes)
    assert _state() == before


def test_an_unknown_name_is_a_type_error_and_changes_nothing() -> None:
    before = _state()
    with pytest.raises(TypeError, match="atempts"):
        mlx_vlm_safe.configure(memory_limit="64MiB", atempts=5)  # type: ignore[call-arg]
    assert _state() == before


def test_the_signature_names_every_setting_of_every_owner() -> None:
    """A setting added to an owner but not to the signature (or the reverse)."""
    from mlx_vlm_safe._patch import DEADLINE_SETTINGS
    from mlx_vlm_safe._patch._memory import MEMORY_SETTINGS
    from mlx_vlm_safe._retry import RETRY_SETTINGS

    parameters = inspect.signature(mlx_vlm_safe.configure).parameters
    assert set(parameters) == RETRY_SETTINGS | MEMORY_SETTINGS | DEADLINE_SETTINGS
    assert all(p.kind is p.KEYWORD_ONLY for p in parameters.values())
    assert {repr(p.default) for p in parameters.values()} == {"UNCHANGED"}


def test_unchanged_settings_stay_as_they_are() -> None:
    mlx_vlm_safe.configure(attempts=5, deadline=None, memory_limit="64MiB")
    policy = mlx_vlm_safe.configure(wait_base=0.5)
    assert (policy.attempts, policy.deadline, policy.wait_base) == (5, None, 0.5)
    assert memory_settings().limit == 64 * 2**20


_TYPING_SNIPPET = """
import mlx_vlm_safe
from tests.conftest import run_mypy

mlx_vlm_safe.configure(attempts=2, memory_limit="1GiB", deadline=None)
mlx_vlm_safe.configure(atempts=2)
mlx_vlm_safe.configure(attempts="2")
"""


def test_a_type_checker_rejects_a_misspelt_or_mistyped_setting(
    tmp_path: pathlib.Path,
) -> None:
    out = run_mypy(_TYPING_SNIPPET, tmp_path)
    assert 'Unexpected keyword argument "atempts" for "configure"' in out, out
    assert 'Argument "attempts" to "configure" has incompatible type "str"' in out, out
    assert out.count("error:") == 2, out


def test_reset_forgets_both_kinds() -> None:
    default = _state()
    mlx_vlm_safe.configure(attempts=7, memory_limit="off")
    assert _state() != default
    mlx_vlm_safe.reset_config()
    assert _state() == default


@given(
    attempts=st.integers(min_value=-2, max_value=4),
    limit=st.sampled_from(["64MiB", "off", "auto", "nonsense", 0, 2**20]),
)
def test_all_or_nothing_for_any_mix(attempts: int, limit: object) -> None:
    mlx_vlm_safe.reset_config()
    before = _state()
    try:
        mlx_vlm_safe.configure(attempts=attempts, memory_limit=limit)
    except ValueError:
        assert _state() == before
    else:
        assert mlx_vlm_safe.get_policy().attempts == attempts
        assert attempts >= 1
