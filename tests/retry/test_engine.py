"""The call path (``call_with_retry``): the fault-schedule property, then cases.

Fakes are used only to inject faults and time (``_fakes.py``). The real-model
tests live in ``tests/e2e/test_retry_real.py``.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import weakref
from typing import Any

import pytest
from hypothesis import given

from mlx_vlm_safe import RetryPolicy, last_attempts, set_testing
from mlx_vlm_safe._retry import CallSpec, call_with_retry

from ._fakes import SPEC, FakeTime, Flaky, Hooks, fast
from ._schedules import SETTINGS, cases, check


@SETTINGS
@given(cases())
def test_call_engine_property(case: dict[str, Any]) -> None:
    check(case, stream=False)


def test_set_testing_forces_attempts_and_waits() -> None:
    time = FakeTime()
    slow = RetryPolicy(attempts=2, wait_base=5.0, wait_max=5.0)
    with set_testing(True, attempts=4, wait=0.25):
        flaky = Flaky(*[MemoryError()] * 9)
        with pytest.raises(MemoryError):
            call_with_retry(
                flaky, (), {}, spec=SPEC, policy=slow, runtime=time.runtime()
            )
    assert len(flaky.calls) == 4
    assert time.slept == [0.25, 0.25, 0.25]
    with set_testing(True):
        flaky = Flaky(*[MemoryError()] * 9)
        with pytest.raises(MemoryError):
            call_with_retry(flaky, (), {}, spec=SPEC, policy=slow)
    assert len(flaky.calls) == 1


def test_deadline_stops_new_attempts() -> None:
    time = FakeTime([1.0])

    def slow(**kwargs: Any) -> str:
        time.now += 4.0
        raise MemoryError

    hooks = Hooks()
    policy = RetryPolicy(
        attempts=10, wait_base=1.0, wait_max=1.0, deadline=9.5, hooks=(hooks,)
    )
    with pytest.raises(MemoryError):
        call_with_retry(slow, (), {}, spec=SPEC, policy=policy, runtime=time.runtime())
    # 4 s, wait 1 s, 4 s: at 9 s, a 1 s wait would start an attempt past 9.5 s.
    assert len(last_attempts()) == 2
    assert time.slept == [1.0]
    assert hooks.give_ups[0].reason == "deadline"


def test_a_failed_attempt_is_freed_before_the_next_attempt() -> None:
    class Big:
        pass

    alive: list[bool] = []
    ref: list[weakref.ref[Big]] = []

    def generate(**kwargs: Any) -> str:
        if not ref:
            big = Big()  # held only by this frame, i.e. by the traceback
            ref.append(weakref.ref(big))
            raise MemoryError
        alive.append(ref[0]() is not None)
        return "ok"

    gc.disable()  # the memory must be freed by reference counting, not by luck
    try:
        assert call_with_retry(generate, (), {}, spec=SPEC, policy=fast()) == "ok"
    finally:
        gc.enable()
    assert alive == [False]


def test_an_empty_result_is_retried_then_returned_as_is() -> None:
    results = iter(["", "", ""])
    spec = CallSpec("gen", frozenset({"max_tokens"}), is_empty=lambda r: r == "")
    assert (
        call_with_retry(lambda **kw: next(results), (), {}, spec=spec, policy=fast())
        == ""
    )
    assert [r.error_type for r in last_attempts()] == [None, None, None]
    kept = RetryPolicy(retry_empty=False)
    assert call_with_retry(lambda: "", (), {}, spec=spec, policy=kept) == ""
    assert len(last_attempts()) == 1


def test_progress_is_recorded_per_attempt() -> None:
    produced = iter([3, 0, 7])
    spec = CallSpec("gen", frozenset(), progress=lambda: next(produced))
    flaky = Flaky(MemoryError(), MemoryError())
    assert call_with_retry(flaky, (), {}, spec=spec, policy=fast()) == "ok"
    assert [r.tokens for r in last_attempts()] == [3, 0, 7]


def test_engine_and_patch_import_neither_wrapt_nor_asyncio() -> None:
    code = (
        "import sys\n"
        "import mlx_vlm_safe._retry, mlx_vlm_safe._patch, mlx_vlm_safe._configure\n"
        "bad = {'wrapt', 'asyncio', 'mlx', 'mlx_vlm', 'PIL'} & set(sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
