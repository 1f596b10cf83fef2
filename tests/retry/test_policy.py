"""The policy value, its process-wide default, the testing switch, the opt-out."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import threading
from collections.abc import Iterator
from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlx_vlm_safe import (
    RetryPolicy,
    get_policy,
    is_testing,
    policy_from_env,
    retries_disabled,
    set_testing,
)
from mlx_vlm_safe._retry import STATE, _policy, configure, reset_config
from mlx_vlm_safe._retry._policy import testing_override


@pytest.fixture(autouse=True)
def _clean_config(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(_policy.os.environ):
        if name.startswith(_policy.ENV_PREFIX):
            monkeypatch.delenv(name)
    reset_config()
    set_testing(False)
    yield
    reset_config()
    set_testing(False)


class _Hook:
    def on_retry(self, details: object) -> None: ...

    def on_give_up(self, details: object) -> None: ...


def test_defaults() -> None:
    policy = RetryPolicy()
    assert policy.attempts == 3
    assert policy.ladder is None  # the target's own (CallSpec.ladder)
    assert (policy.wait_base, policy.wait_max, policy.deadline) == (1.0, 8.0, 120.0)
    assert (policy.retry_on, policy.retry_empty, policy.hooks) == ((), True, ())


def test_frozen_with_slots() -> None:
    policy = RetryPolicy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.attempts = 5  # type: ignore[misc]
    assert not hasattr(policy, "__dict__")


def test_ladder_is_copied_and_read_only() -> None:
    step = {"max_tokens": 100}
    policy = RetryPolicy(ladder=[step])  # type: ignore[arg-type]
    step["max_tokens"] = 10_000
    assert policy.ladder[0]["max_tokens"] == 100
    assert isinstance(policy.ladder, tuple)
    assert isinstance(policy.ladder[0], MappingProxyType)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"attempts": 0}, "attempts"),
        ({"attempts": True}, "attempts"),
        ({"attempts": 2.0}, "attempts"),
        ({"wait_base": -1}, "wait_base"),
        ({"wait_base": float("nan")}, "wait_base"),
        ({"wait_max": float("inf")}, "wait_max"),
        ({"wait_base": 10**400}, "wait_base"),
        ({"wait_base": 3.0, "wait_max": 2.0}, "wait_max (2.0)"),
        ({"deadline": 0}, "deadline"),
        ({"deadline": -5.0}, "deadline"),
        ({"deadline": "soon"}, "'soon'"),
        ({"retry_empty": 1}, "retry_empty"),
        ({"ladder": {"max_tokens": 5}}, "ladder must be a tuple"),
        ({"ladder": ("max_tokens",)}, "'max_tokens'"),
        (
            {
                "ladder": ({"max_tokens": 0},),
            },
            "max_tokens=0",
        ),
        ({"ladder": ({"max_tokens": True},)}, "max_tokens=True"),
        ({"ladder": ({"max_tokens": 2.5},)}, "max_tokens=2.5"),
        ({"ladder": ({"not a name": 5},)}, "'not a name'"),
        ({"ladder": ({"max_tokens": 256}, {"max_tokens": 512})}, "512"),
        ({"retry_on": (KeyboardInterrupt,)}, "KeyboardInterrupt"),
        ({"retry_on": (int,)}, "int"),
        ({"retry_on": ("MemoryError",)}, "'MemoryError'"),
        ({"retry_on": MemoryError}, "retry_on must be a tuple"),
        ({"hooks": (object(),)}, "on_retry"),
    ],
    ids=repr,
)
def test_bad_values_raise_value_error_naming_them(
    changes: dict[str, object], named: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        RetryPolicy(**changes)  # type: ignore[arg-type]


def test_good_values_are_normalised() -> None:
    policy = RetryPolicy(
        attempts=5,
        wait_base=0,
        wait_max=2,
        deadline=None,
        retry_on=[MemoryError, callable],  # type: ignore[arg-type]
        hooks=[_Hook()],  # type: ignore[arg-type]
        ladder=(),
    )
    assert policy.wait_base == 0.0
    assert isinstance(policy.wait_max, float)
    assert isinstance(policy.retry_on, tuple)
    assert isinstance(policy.hooks, tuple)


# --- environment --------------------------------------------------------------


def test_policy_from_env_reads_every_variable() -> None:
    policy = policy_from_env(
        {
            "MLX_VLM_SAFE_RETRY_ATTEMPTS": " 5 ",
            "MLX_VLM_SAFE_RETRY_WAIT_BASE": "0.5",
            "MLX_VLM_SAFE_RETRY_WAIT_MAX": "4",
            "MLX_VLM_SAFE_RETRY_DEADLINE": "None",
            "MLX_VLM_SAFE_RETRY_LADDER": (
                "max_tokens=512; max_tokens=256, prefill_step_size=128"
            ),
        }
    )
    assert (policy.attempts, policy.wait_base, policy.wait_max) == (5, 0.5, 4.0)
    assert policy.deadline is None
    assert [dict(s) for s in policy.ladder] == [
        {"max_tokens": 512},
        {"max_tokens": 256, "prefill_step_size": 128},
    ]


def test_empty_ladder_variable_means_no_ladder() -> None:
    assert policy_from_env({"MLX_VLM_SAFE_RETRY_LADDER": ""}).ladder == ()
    assert policy_from_env({}).ladder == RetryPolicy().ladder


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ATTEMPTS", "three"),
        ("ATTEMPTS", "0"),
        ("ATTEMPTS", ""),
        ("WAIT_BASE", "-1"),
        ("WAIT_BASE", "fast"),
        ("WAIT_MAX", "nan"),
        ("DEADLINE", "0"),
        ("DEADLINE", "never"),
        ("LADDER", "max_tokens"),
        ("LADDER", "max_tokens=512;"),
        ("LADDER", "max_tokens=lots"),
        ("LADDER", "max_tokens=0"),
        ("LADDER", "max_tokens=1,max_tokens=2"),
        ("LADDER", "max_tokens=256;max_tokens=512"),
        ("LADDER", "bad key=5"),
    ],
)
def test_each_bad_variable_raises_value_error_naming_it(
    variable: str, value: str
) -> None:
    name = "MLX_VLM_SAFE_RETRY_" + variable
    with pytest.raises(ValueError, match=name) as info:
        policy_from_env({name: value})
    assert repr(value) in str(info.value)


def test_variables_that_do_not_fit_together_are_all_named() -> None:
    env = {"MLX_VLM_SAFE_RETRY_WAIT_BASE": "10", "MLX_VLM_SAFE_RETRY_WAIT_MAX": "2"}
    with pytest.raises(ValueError, match=r"WAIT_BASE='10'.*WAIT_MAX='2'"):
        policy_from_env(env)
    both = policy_from_env({**env, "MLX_VLM_SAFE_RETRY_WAIT_MAX": "20"})
    assert (both.wait_base, both.wait_max) == (10.0, 20.0)


def test_environment_is_read_once_on_first_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLX_VLM_SAFE_RETRY_ATTEMPTS", "7")
    assert get_policy().attempts == 7
    monkeypatch.setenv("MLX_VLM_SAFE_RETRY_ATTEMPTS", "2")
    assert get_policy().attempts == 7
    reset_config()
    assert get_policy().attempts == 2


def test_bad_environment_on_first_use_warns_once_and_keeps_defaults(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MLX_VLM_SAFE_RETRY_ATTEMPTS", "many")
    with caplog.at_level(logging.WARNING, logger="mlx_vlm_safe"):
        assert get_policy() == RetryPolicy()
        assert get_policy() == RetryPolicy()
        configure(wait_base=0.1)
    warnings = [r for r in caplog.records if r.name == "mlx_vlm_safe"]
    assert len(warnings) == 1
    assert "MLX_VLM_SAFE_RETRY_ATTEMPTS='many'" in warnings[0].getMessage()


# --- configure --------------------------------------------------------------------


def test_configure_returns_and_installs_the_new_default() -> None:
    new = configure(attempts=5, deadline=None)
    assert new is get_policy()
    assert (new.attempts, new.deadline) == (5, None)
    assert configure(wait_base=0.5).attempts == 5  # changes accumulate
    reset_config()
    assert get_policy() == RetryPolicy()


def test_configure_rejects_unknown_names_and_bad_values_without_changing() -> None:
    before = configure(attempts=4)
    with pytest.raises(TypeError, match="atempts, colour"):
        configure(atempts=5, colour="red")
    with pytest.raises(ValueError, match="attempts"):
        configure(attempts=0)
    assert get_policy() is before


def test_configure_is_guarded_by_the_lock() -> None:
    done = threading.Event()

    def change() -> None:
        configure(attempts=9)
        done.set()

    with _policy._config.lock:
        thread = threading.Thread(target=change)
        thread.start()
        assert not done.wait(0.2)  # blocked while someone else holds the lock
    thread.join(5)
    assert done.is_set()
    assert get_policy().attempts == 9


def test_concurrent_configure_keeps_a_consistent_policy() -> None:
    def worker(n: int) -> None:
        for _ in range(200):
            configure(attempts=n, wait_base=float(n), wait_max=float(n))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = get_policy()
    assert final.attempts == final.wait_base == final.wait_max


@given(st.integers(1, 50), st.floats(0, 100), st.floats(0, 100))
def test_configure_round_trips(attempts: int, a: float, b: float) -> None:
    low, high = sorted((a, b))
    policy = configure(attempts=attempts, wait_base=low, wait_max=high)
    assert get_policy() == policy
    assert (policy.attempts, policy.wait_base, policy.wait_max) == (attempts, low, high)
    reset_config()


# --- testing switch -----------------------------------------------------------------


def test_set_testing_as_a_call_and_as_a_context_manager() -> None:
    assert not is_testing()
    assert testing_override() is None
    set_testing(True, attempts=2, wait=0.5)
    assert is_testing()
    assert testing_override() == (2, 0.5)
    with set_testing(True):
        assert testing_override() == (1, 0.0)
        with set_testing(False):
            assert not is_testing()
        assert testing_override() == (1, 0.0)
    assert testing_override() == (2, 0.5)
    set_testing(False)
    assert not is_testing()


@pytest.mark.parametrize(
    "kwargs", [{"attempts": 0}, {"attempts": 1.5}, {"wait": -1.0}, {"wait": "x"}]
)
def test_set_testing_validates(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        set_testing(True, **kwargs)  # type: ignore[arg-type]
    assert not is_testing()


# --- per-call opt-out -----------------------------------------------------------------


def test_retries_disabled_sets_and_restores_the_state() -> None:
    before = STATE.get()
    with retries_disabled():
        block = STATE.get()
        assert block is not before
        assert block.active
        with retries_disabled():
            assert STATE.get().active
            assert STATE.get() is not block
        assert STATE.get() is block
    assert STATE.get() is before
    with pytest.raises(ZeroDivisionError), retries_disabled():
        raise ZeroDivisionError
    assert STATE.get() is before


def test_retries_disabled_is_per_thread() -> None:
    seen: list[bool] = []
    with retries_disabled():
        thread = threading.Thread(target=lambda: seen.append(STATE.get().active))
        thread.start()
        thread.join()
    assert seen == [False]


def test_retries_disabled_is_per_task() -> None:
    async def main() -> list[bool]:
        gate = asyncio.Event()
        seen: list[bool] = []

        async def disabled() -> None:
            with retries_disabled():
                gate.set()
                await asyncio.sleep(0.01)
                seen.append(STATE.get().active)

        async def other() -> None:
            await gate.wait()
            seen.append(STATE.get().active)

        await asyncio.gather(disabled(), other())
        return seen

    assert sorted(asyncio.run(main())) == [False, True]
