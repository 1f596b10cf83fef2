"""After a failure: the very exception, its history and notes; interrupts pass."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from mlx_vlm_safe import RetryPolicy, last_attempts
from mlx_vlm_safe._retry import Runtime, call_with_retry

from ._fakes import SPEC, Flaky, Hooks, fast


def test_a_first_attempt_caller_error_is_raised_as_is_without_hooks() -> None:
    hooks, error = Hooks(), ValueError("bad argument")
    with pytest.raises(ValueError, match="bad argument") as info:
        call_with_retry(Flaky(error), (), {}, spec=SPEC, policy=fast(hooks=(hooks,)))
    assert info.value is error
    assert (hooks.retries, hooks.give_ups) == ([], [])
    (record,) = info.value.mlx_vlm_safe_attempts  # type: ignore[attr-defined]
    assert (record.number, record.error_type) == (1, "ValueError")
    assert getattr(info.value, "__notes__", []) == []


@pytest.mark.skipif(sys.version_info < (3, 11), reason="add_note is 3.11+")
def test_notes_give_one_line_per_attempt() -> None:
    with pytest.raises(MemoryError) as info:
        call_with_retry(Flaky(*[MemoryError()] * 3), (), {}, spec=SPEC, policy=fast())
    notes = info.value.__notes__
    assert len(notes) == 4
    assert notes[0].startswith("mlx_vlm_safe: attempt 1/3 raised MemoryError")
    assert "attempt 2/3 with max_tokens=512" in notes[1]
    assert notes[3].startswith("mlx_vlm_safe: gave up (attempts")


def test_without_add_note_the_history_is_still_attached() -> None:
    class OldStyle(MemoryError):
        def __getattribute__(self, name: str) -> Any:
            if name == "add_note":
                raise AttributeError(name)
            return super().__getattribute__(name)

    class Locked(MemoryError):
        def __setattr__(self, name: str, value: Any) -> None:
            raise TypeError("read-only")

    with pytest.raises(OldStyle) as info:
        call_with_retry(Flaky(*[OldStyle()] * 3), (), {}, spec=SPEC, policy=fast())
    assert len(info.value.mlx_vlm_safe_attempts) == 3  # type: ignore[attr-defined]
    assert getattr(info.value, "__notes__", []) == []
    locked = Locked()
    with pytest.raises(Locked) as info2:
        call_with_retry(Flaky(locked, locked, locked), (), {}, spec=SPEC, policy=fast())
    assert info2.value is locked


def test_ctrl_c_during_a_wait_propagates_at_once() -> None:
    def interrupted_sleep(seconds: float) -> None:
        raise KeyboardInterrupt

    hooks, flaky = Hooks(), Flaky(MemoryError(), MemoryError())
    runtime = Runtime(sleep=interrupted_sleep)
    with pytest.raises(KeyboardInterrupt):
        call_with_retry(
            flaky,
            (),
            {},
            spec=SPEC,
            policy=RetryPolicy(hooks=(hooks,)),
            runtime=runtime,
        )
    assert len(flaky.calls) == 1
    assert len(hooks.retries) == 1  # told before the wait
    assert hooks.give_ups == []
    assert [r.error_type for r in last_attempts()] == ["MemoryError"]


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt(), SystemExit(2)])
def test_an_interrupt_in_a_later_attempt_propagates_untouched(
    interrupt: BaseException,
) -> None:
    hooks = Hooks()
    flaky = Flaky(MemoryError(), interrupt, MemoryError())
    with pytest.raises(type(interrupt)) as info:
        call_with_retry(flaky, (), {}, spec=SPEC, policy=fast(hooks=(hooks,)))
    assert info.value is interrupt
    assert not hasattr(interrupt, "mlx_vlm_safe_attempts")
    assert len(flaky.calls) == 2
    assert (len(hooks.retries), hooks.give_ups) == (1, [])
    assert [r.error_type for r in last_attempts()] == [
        "MemoryError",
        type(interrupt).__name__,
    ]
