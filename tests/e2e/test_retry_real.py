"""The retry policy applied by the patch, on the real release and model.

Faults are planted into the real generation; the retries, the ladder and the
records are the library's own. Waits are configured to zero so the suite does
not sleep; the wait maths is covered by the engine's property tests.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import mlx_vlm_safe
from mlx_vlm_safe._patch import locate
from mlx_vlm_safe.testing import empty_stream, plant_fault
from tools.matrix import Expected

from ..conftest import Tiny, temperature_keyword

pytestmark = pytest.mark.model

METAL_OOM = "[metal::malloc] Attempting to allocate 137438953472 bytes"


@pytest.fixture(autouse=True)
def _no_waits() -> Iterator[None]:
    mlx_vlm_safe.configure(wait_base=0.0, wait_max=0.0)
    yield
    mlx_vlm_safe.reset_config()


def _tokens() -> int:
    """Tokens of the last call, as its stream counted them (any result shape)."""
    outcome = mlx_vlm_safe.last_outcome()
    assert outcome is not None
    return outcome.generation_tokens


@pytest.mark.parametrize(
    "transient", [MemoryError(), RuntimeError(METAL_OOM)], ids=["MemoryError", "malloc"]
)
def test_transient_error_recovers_on_attempt_two_with_a_smaller_budget(
    tiny: Tiny, mlx_vlm: Any, release: Expected, transient: Exception
) -> None:
    """Attempt 1 fails during prefill; attempt 2 runs with max_tokens capped."""
    mlx_vlm_safe.configure(ladder=({"max_tokens": 4},))
    with plant_fault(transient, after_tokens=0, times=1) as fault:
        result = tiny.call(mlx_vlm.generate, max_tokens=8)
    assert result is not None
    assert fault.calls == 2
    assert _tokens() == release.tokens_for(4)
    first, second = mlx_vlm_safe.last_attempts()
    assert first.error_type == type(transient).__name__
    assert second.error_type is None
    assert dict(second.changes) == {"max_tokens": 4}
    assert second.tokens == release.tokens_for(4)


def test_ladder_never_raises_the_callers_budget(
    tiny: Tiny, mlx_vlm: Any, release: Expected
) -> None:
    """max_tokens=3 stays 3 on every attempt; the default ladder is 512, 256."""
    with plant_fault(MemoryError(), after_tokens=0, times=2) as fault:
        tiny.call(mlx_vlm.generate, max_tokens=3)
    assert fault.calls == 3
    assert _tokens() == release.tokens_for(3)
    assert all(
        dict(r.changes).get("max_tokens", 3) <= 3 for r in mlx_vlm_safe.last_attempts()
    )


def _bad_arguments(release: Expected) -> list[dict[str, Any]]:
    bad: list[dict[str, Any]] = [{"image": ["/nope/missing.png"]}]
    if not release.has("kwargs_dropped"):  # 0.1.7-0.1.9 never see sampling args
        bad.append({temperature_keyword(importlib.import_module("mlx_vlm")): "0.7"})
    return bad


def test_real_bad_argument_fails_once(
    tiny: Tiny, mlx_vlm: Any, release: Expected
) -> None:
    """A missing image, a str temperature: deterministic, so one attempt only."""
    for kwargs in _bad_arguments(release):
        with pytest.raises((TypeError, ValueError, OSError)) as info:
            tiny.call(mlx_vlm.generate, **kwargs)
        assert len(mlx_vlm_safe.last_attempts()) == 1
        attached = info.value.mlx_vlm_safe_attempts  # type: ignore[attr-defined]
        assert attached == mlx_vlm_safe.last_attempts()


def test_persistent_memory_error_gives_up_with_the_original(
    tiny: Tiny, mlx_vlm: Any
) -> None:
    """Three attempts, then the very MemoryError object, history attached."""
    planted = MemoryError("still out of memory")
    with (
        plant_fault(planted, after_tokens=0) as fault,
        pytest.raises(MemoryError) as info,
    ):
        tiny.call(mlx_vlm.generate)
    assert info.value is planted
    assert fault.calls == 3
    assert [r.error_type for r in info.value.mlx_vlm_safe_attempts] == [
        "MemoryError"
    ] * 3  # type: ignore[attr-defined]


def test_ctrl_c_is_never_retried(tiny: Tiny, mlx_vlm: Any) -> None:
    """KeyboardInterrupt on attempt 1 reaches the caller; no attempt 2."""
    with (
        plant_fault(KeyboardInterrupt, after_tokens=0) as fault,
        pytest.raises(KeyboardInterrupt),
    ):
        tiny.call(mlx_vlm.generate)
    assert fault.calls == 1


def test_empty_generation_is_retried_then_returned_empty(
    tiny: Tiny, mlx_vlm: Any
) -> None:
    """Nothing produced and no error: retried; in the end an empty result."""
    with empty_stream():
        result = tiny.call(mlx_vlm.generate)
    assert result is not None
    assert len(mlx_vlm_safe.last_attempts()) == 3
    assert mlx_vlm_safe.last_outcome() == mlx_vlm_safe.Outcome("empty", 0)


def test_retries_disabled_for_one_call(tiny: Tiny, mlx_vlm: Any) -> None:
    """retries_disabled(): the planted transient error reaches the caller."""
    with (
        plant_fault(MemoryError(), after_tokens=0, times=1),
        pytest.raises(MemoryError),
        mlx_vlm_safe.retries_disabled(),
    ):
        tiny.call(mlx_vlm.generate)


def test_stream_failure_before_first_item_is_retried(
    tiny: Tiny, exports: Any, release: Expected
) -> None:
    """stream_generate: a transient failure before any item is invisible."""
    with plant_fault(MemoryError(), after_tokens=0, times=1) as fault:
        items = list(tiny.stream(exports.stream_generate, max_tokens=8))
    assert fault.calls == 2
    assert items
    assert _tokens() == release.tokens_for(8)


def test_stream_failure_after_first_item_propagates_without_duplicates(
    tiny: Tiny, exports: Any
) -> None:
    """After an item was yielded nothing is retried: no text is ever repeated."""
    planted = MemoryError()
    items: list[Any] = []
    with (
        plant_fault(planted, after_tokens=2) as fault,
        pytest.raises(MemoryError) as info,
    ):
        items.extend(tiny.stream(exports.stream_generate, max_tokens=8))
    assert info.value is planted
    assert fault.calls == 1
    assert len(items) == 2


def test_prefill_step_size_is_injected_only_where_the_release_accepts_it(
    tiny: Tiny, mlx_vlm: Any
) -> None:
    """A ladder keyword the release does not know never reaches it."""
    accepted = locate(sys.modules["mlx_vlm"]).accepted_kwargs or frozenset()
    mlx_vlm_safe.configure(ladder=({"prefill_step_size": 64},))
    with plant_fault(MemoryError(), after_tokens=0, times=1):
        tiny.call(mlx_vlm.generate)
    second = mlx_vlm_safe.last_attempts()[1]
    if "prefill_step_size" in accepted:
        assert dict(second.changes) == {"prefill_step_size": 64}
    else:
        assert dict(second.changes) == {}
