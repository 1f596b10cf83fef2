"""The retry engine and ``@retry``: property tests over fault schedules, then cases.

Fakes are used only to inject faults and time: a fake clock that attempts and
waits advance, a recording sleep, and a scripted ``uniform``. The real-model
tests live elsewhere.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import inspect
import logging
import pathlib
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from itertools import pairwise
from typing import Any, ClassVar
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlx_vlm_safe import retry
from mlx_vlm_safe._retry import (
    AttemptRecord,
    CallSpec,
    RetryDetails,
    RetryPolicy,
    Runtime,
    _decorator,
    call_with_retry,
    configure,
    last_attempts,
    reset_config,
    set_testing,
    stream_with_retry,
)
from mlx_vlm_safe._retry import retries_disabled as disabled
from mlx_vlm_safe._retry._ladder import ladder_changes

# --- fakes ----------------------------------------------------------------------


class FakeTime:
    """A clock that only moves when an attempt or a wait says so."""

    def __init__(self, fractions: list[float] | None = None) -> None:
        self.now = 0.0
        self.slept: list[float] = []
        self.draws: list[float] = []
        self.fractions = fractions or [0.5]

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def uniform(self, low: float, high: float) -> float:
        fraction = self.fractions[len(self.draws) % len(self.fractions)]
        value = low + (high - low) * fraction
        self.draws.append(value)
        return value

    def runtime(self) -> Runtime:
        return Runtime(clock=self.clock, sleep=self.sleep, uniform=self.uniform)


class CustomBase(BaseException):
    pass


EXCEPTIONS: dict[str, Callable[[], BaseException]] = {
    "memory": lambda: MemoryError("oom"),
    "malloc": lambda: RuntimeError("[metal::malloc] Attempting to allocate 99 bytes"),
    "none_defect": lambda: AttributeError("'NoneType' object has no attribute 'token'"),
    "value": lambda: ValueError("bad argument"),
    "type": lambda: TypeError("unexpected keyword"),
    "key": lambda: KeyError("pixel_values"),
    "os": lambda: FileNotFoundError("cat.png"),
    "runtime": lambda: RuntimeError("shape mismatch"),
    "device_info": lambda: RuntimeError("[metal::device_info] no metal"),
    "interrupt": KeyboardInterrupt,
    "exit": lambda: SystemExit(3),
    "generator_exit": GeneratorExit,
    "custom_base": CustomBase,
}
RETRYABLE = {"memory", "malloc", "none_defect"}
BASE_ONLY = {"interrupt", "exit", "generator_exit", "custom_base"}


@dataclasses.dataclass(frozen=True)
class Fault:
    """What one attempt does: ok / empty, or raise at the call, before the
    first item, or after ``items`` items."""

    kind: str  # "ok" | "empty" | "call" | "before" | "after"
    exc: str
    items: int
    duration: float


class Target:
    """Plays a fault schedule; one entry per attempt (the last one repeats)."""

    def __init__(self, schedule: list[Fault], time: FakeTime) -> None:
        self.schedule, self.time = schedule, time
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.raised: list[BaseException] = []
        self.closed = 0

    def _next(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Fault:
        fault = self.schedule[min(len(self.calls), len(self.schedule) - 1)]
        self.calls.append((args, dict(kwargs)))
        self.time.now += fault.duration
        return fault

    def _raise(self, fault: Fault) -> None:
        exc = EXCEPTIONS[fault.exc]()
        self.raised.append(exc)
        raise exc

    def call(self, *args: Any, **kwargs: Any) -> str:
        fault = self._next(args, kwargs)
        if fault.kind in {"call", "before", "after"}:
            self._raise(fault)
        return "" if fault.kind == "empty" else f"result-{len(self.calls)}"

    def stream(self, *args: Any, **kwargs: Any) -> Iterator[tuple[int, int]]:
        fault = self._next(args, kwargs)
        if fault.kind == "call":
            self._raise(fault)
        return self._items(fault, len(self.calls))

    def _items(self, fault: Fault, number: int) -> Iterator[tuple[int, int]]:
        try:
            if fault.kind == "before":
                self._raise(fault)
            if fault.kind != "empty":
                for i in range(fault.items):
                    yield number, i
            if fault.kind == "after":
                self._raise(fault)
        finally:
            self.closed += 1


class Hooks:
    def __init__(self) -> None:
        self.retries: list[RetryDetails] = []
        self.give_ups: list[RetryDetails] = []

    def on_retry(self, details: RetryDetails) -> None:
        self.retries.append(details)

    def on_give_up(self, details: RetryDetails) -> None:
        self.give_ups.append(details)


KEYS = ("max_tokens", "prefill_step_size", "other")


@st.composite
def ladders(draw: st.DrawFn) -> tuple[dict[str, int], ...]:
    steps = draw(
        st.lists(
            st.dictionaries(st.sampled_from(KEYS), st.integers(1, 4096), max_size=3),
            max_size=3,
        )
    )
    lowest: dict[str, int] = {}
    for step in steps:  # make it valid: a step never raises an earlier value
        for key in step:
            step[key] = lowest[key] = min(step[key], lowest.get(key, step[key]))
    return tuple(steps)


@st.composite
def policies(draw: st.DrawFn) -> RetryPolicy:
    base = draw(st.sampled_from([0.0, 0.1, 1.0, 3.0]))
    return RetryPolicy(
        attempts=draw(st.integers(1, 5)),
        ladder=draw(ladders()),
        wait_base=base,
        wait_max=base + draw(st.sampled_from([0.0, 0.5, 4.0])),
        deadline=draw(st.one_of(st.none(), st.floats(0.5, 30))),
        retry_empty=draw(st.booleans()),
    )


faults = st.builds(
    Fault,
    kind=st.sampled_from(["ok", "empty", "call", "before", "after"]),
    exc=st.sampled_from(sorted(EXCEPTIONS)),
    items=st.integers(1, 3),
    duration=st.sampled_from([0.0, 0.01, 1.0, 7.0]),
)
budgets = st.one_of(st.none(), st.integers(1, 4096))


@st.composite
def cases(draw: st.DrawFn) -> dict[str, Any]:
    passed = draw(st.dictionaries(st.sampled_from(KEYS[:2]), budgets, max_size=2))
    return {
        "schedule": draw(st.lists(faults, min_size=1, max_size=6)),
        "policy": draw(policies()),
        "kwargs": passed,
        "accepted": draw(
            st.one_of(st.none(), st.frozensets(st.sampled_from(KEYS), max_size=3))
        ),
        "defaults": draw(st.dictionaries(st.sampled_from(KEYS), budgets, max_size=3)),
        "fractions": draw(st.lists(st.floats(0, 1), min_size=1, max_size=4)),
    }


# --- the property --------------------------------------------------------------------


def _fails_retryably(
    fault: Fault, mode: str, stream: bool, policy: RetryPolicy
) -> bool:
    """Whether this attempt's outcome lets the loop go on (if limits allow)."""
    if fault.kind == "ok" or (fault.kind == "after" and stream):
        return False
    if fault.kind == "empty":
        return policy.retry_empty and (stream or mode == "engine")
    return fault.exc in RETRYABLE


def _effective(value: object) -> float:
    return float("inf") if value is None else float(value)  # type: ignore[arg-type]


@dataclasses.dataclass
class Observed:
    """One run of a case: what went in, what came out, what happened between."""

    mode: str
    stream: bool
    policy: RetryPolicy
    kwargs: dict[str, Any]
    accepted: frozenset[str] | None
    defaults: dict[str, Any]
    prompt: object
    time: FakeTime
    target: Target
    hooks: Hooks
    result: Any
    raised: BaseException | None
    records: tuple[AttemptRecord, ...]

    @property
    def schedule(self) -> list[Fault]:
        plan = self.target.schedule
        return [plan[min(i, len(plan) - 1)] for i in range(len(self.target.calls))]


def _run(case: dict[str, Any], mode: str, stream: bool) -> Observed:
    time = FakeTime(case["fractions"])
    target = Target(case["schedule"], time)
    hooks = Hooks()
    policy = dataclasses.replace(case["policy"], hooks=(hooks,))
    prompt = object()
    kwargs = dict(case["kwargs"])
    if mode == "engine":
        spec = CallSpec(
            "fake",
            case["accepted"],
            case["defaults"],
            is_empty=lambda r: r == "",
            positions={"prompt": 0},
        )
        runner: Any = stream_with_retry if stream else call_with_retry
        fn = target.stream if stream else target.call
        call = lambda: runner(  # noqa: E731
            fn, (prompt,), kwargs, spec=spec, policy=policy, runtime=time.runtime()
        )
        accepted, defaults = case["accepted"], case["defaults"]
    else:
        with mock.patch.object(_decorator, "DEFAULT_RUNTIME", time.runtime()):
            wrapped = retry(policy=policy)(_fake_function(target, stream))
        call = lambda: wrapped(prompt, **kwargs)  # noqa: E731
        accepted = frozenset({"prompt", "max_tokens", "prefill_step_size"})
        defaults = {"max_tokens": 2048, "prefill_step_size": None}
    result: Any = None
    raised: BaseException | None = None
    try:
        result = list(call()) if stream else call()
    except BaseException as exc:
        raised = exc
    return Observed(
        mode, stream, policy, kwargs, accepted, defaults, prompt, time, target,
        hooks, result, raised, last_attempts(),
    )  # fmt: skip


def _check_attempts(o: Observed) -> None:
    """Within the limit; every attempt but the last failed retryably."""
    n = len(o.target.calls)
    assert 1 <= n <= o.policy.attempts
    for fault in o.schedule[:-1]:
        assert _fails_retryably(fault, o.mode, o.stream, o.policy), o.schedule
    assert len(o.hooks.retries) == n - 1
    assert [r.number for r in o.records] == list(range(1, n + 1))


def _check_waits(o: Observed) -> None:
    """Bounded by wait_max, and in total by the deadline."""
    assert len(o.time.slept) <= len(o.target.calls) - 1
    assert all(0 <= w <= o.policy.wait_max for w in o.time.slept)
    if o.policy.deadline is not None:
        assert sum(o.time.slept) <= o.policy.deadline + 1e-9
        for d in o.hooks.retries:
            assert d.elapsed + d.wait <= o.policy.deadline + 1e-9


def _check_ladder(o: Observed) -> None:
    """Attempt 1 exactly as called; then never above the caller's value,
    non-increasing, and nothing injected that is not known to be accepted."""
    calls = o.target.calls
    assert calls[0][1] == o.kwargs
    assert all(args[0] is o.prompt and len(args) == 1 for args, _ in calls)
    for key in KEYS:
        values = [
            kw.get(key, o.kwargs.get(key, o.defaults.get(key))) for _, kw in calls
        ]
        assert all(_effective(b) <= _effective(a) for a, b in pairwise(values))
        if key in o.kwargs:
            assert all(_effective(v) <= _effective(o.kwargs[key]) for v in values)
        elif key not in (o.defaults if o.accepted is None else o.accepted):
            assert all(key not in kw for _, kw in calls), key


def _check_outcome(o: Observed) -> None:
    """The right result, or the very exception object with its history."""
    n, final, raised = len(o.target.calls), o.schedule[-1], o.raised
    if o.stream:  # items from the final attempt only, each once, in order
        if final.kind == "ok":
            assert o.result == [(n, i) for i in range(final.items)]
        if final.kind == "after":  # after the first item: unchanged, not retried
            assert raised is o.target.raised[-1]
            assert not hasattr(raised, "mlx_vlm_safe_attempts")
        opened = sum(f.kind != "call" for f in o.schedule)
        assert o.target.closed == opened  # every underlying generator finished
    elif final.kind in {"ok", "empty"}:
        assert raised is None
        assert o.result == ("" if final.kind == "empty" else f"result-{n}")
    if final.kind == "empty":  # a final empty result is returned, not raised
        assert raised is None
        assert o.result == ([] if o.stream else "")
    if final.kind in {"call", "before"} or (final.kind == "after" and not o.stream):
        assert raised is o.target.raised[-1]  # the very object, never a wrapper
        assert o.records[-1].error_type == type(raised).__name__
        if final.exc in BASE_ONLY:  # untouched, and no hook heard of it
            assert not hasattr(raised, "mlx_vlm_safe_attempts")
            assert o.hooks.give_ups == []
        else:
            assert raised.mlx_vlm_safe_attempts == o.records  # type: ignore[union-attr]


def _check_stop(o: Observed) -> None:
    """Why the loop stopped: limit, deadline, or a non-retryable outcome."""
    n, final = len(o.target.calls), o.schedule[-1]
    if _fails_retryably(final, o.mode, o.stream, o.policy):
        (give_up,) = o.hooks.give_ups
        if give_up.reason == "attempts":
            assert n == o.policy.attempts
        else:
            assert give_up.reason == "deadline"
            assert o.policy.deadline is not None
            refused = o.time.draws[-1] if o.policy.wait_base > 0 else 0.0
            assert give_up.elapsed + refused > o.policy.deadline
    elif final.kind in {"call", "before", "after"} and final.exc not in BASE_ONLY:
        if (final.kind == "after" and o.stream) or n == 1:
            assert o.hooks.give_ups == []  # the caller's own error: no retry event
        else:
            assert [d.reason for d in o.hooks.give_ups] == ["not-retryable"]


def _check(case: dict[str, Any], mode: str, stream: bool) -> None:
    observed = _run(case, mode, stream)
    _check_attempts(observed)
    _check_waits(observed)
    _check_ladder(observed)
    _check_outcome(observed)
    _check_stop(observed)


_SIGNATURE = inspect.Signature(
    [
        inspect.Parameter("prompt", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter(
            "max_tokens", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=2048
        ),
        inspect.Parameter(
            "prefill_step_size", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None
        ),
    ]
)


def _fake_function(target: Target, stream: bool) -> Callable[..., Any]:
    """A function with a generate-like signature that records its exact call."""
    if stream:

        def fake_stream(*args: Any, **kwargs: Any) -> Iterator[tuple[int, int]]:
            yield from target.stream(*args, **kwargs)

        fake: Callable[..., Any] = fake_stream
    else:

        def fake_call(*args: Any, **kwargs: Any) -> str:
            return target.call(*args, **kwargs)

        fake = fake_call
    fake.__signature__ = _SIGNATURE  # type: ignore[attr-defined]
    return fake


_settings = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@_settings
@given(cases())
def test_call_engine_property(case: dict[str, Any]) -> None:
    _check(case, "engine", stream=False)


@_settings
@given(cases())
def test_stream_engine_property(case: dict[str, Any]) -> None:
    _check(case, "engine", stream=True)


@_settings
@given(cases())
def test_call_decorator_property(case: dict[str, Any]) -> None:
    _check(case, "decorator", stream=False)


@_settings
@given(cases())
def test_stream_decorator_property(case: dict[str, Any]) -> None:
    case["schedule"] = [
        dataclasses.replace(f, kind="before") if f.kind == "call" else f
        for f in case["schedule"]
    ]
    _check(case, "decorator", stream=True)


# --- plain cases ------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _clean_config() -> Iterator[None]:
    reset_config()
    set_testing(False)
    yield
    reset_config()
    set_testing(False)


def _fast(**changes: Any) -> RetryPolicy:
    return RetryPolicy(**{"wait_base": 0.0, "wait_max": 0.0, **changes})


class Flaky:
    """Raises the given exceptions in turn, then returns ``"ok"``."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        self.calls.append((args, kwargs))
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


SPEC = CallSpec("flaky", frozenset({"max_tokens", "prefill_step_size"}))


def test_attempt_one_gets_the_callers_objects_then_the_ladder_applies() -> None:
    image, flaky = object(), Flaky(MemoryError(), MemoryError())
    result = call_with_retry(
        flaky, (image,), {"max_tokens": 1000, "image": image}, spec=SPEC, policy=_fast()
    )
    assert result == "ok"
    assert [kw["max_tokens"] for _, kw in flaky.calls] == [1000, 512, 256]
    assert all(args[0] is image and kw["image"] is image for args, kw in flaky.calls)
    assert [dict(r.changes) for r in last_attempts()] == [
        {},
        {"max_tokens": 512},
        {"max_tokens": 256},
    ]


@pytest.mark.parametrize(
    ("spec", "args", "kwargs", "expected"),
    [
        (SPEC, (), {"max_tokens": 100}, {}),  # a small budget is never raised
        (SPEC, (), {"max_tokens": None}, {"max_tokens": 256}),  # None: unbounded
        (SPEC, (), {}, {"max_tokens": 256}),  # accepted, unknown default
        (CallSpec("f", frozenset()), (), {}, {}),  # not accepted: never injected
        (CallSpec("f", frozenset()), (), {"max_tokens": 999}, {"max_tokens": 256}),
        (CallSpec("f", None, {"max_tokens": 2048}), (), {}, {"max_tokens": 256}),
        (CallSpec("f", None, {"other": 1}), (), {}, {}),  # unknown and unlisted
        (CallSpec("f", None, {"max_tokens": 128}), (), {}, {}),  # default is lower
        (
            CallSpec("f", None, positions={"max_tokens": 1}),
            ("p", 300),
            {},
            {"max_tokens": 256},
        ),
        (CallSpec("f", None, {"max_tokens": "x"}), (), {}, {}),  # not a budget
    ],
)
def test_ladder_changes(
    spec: CallSpec, args: tuple[Any, ...], kwargs: dict[str, Any], expected: dict
) -> None:
    ladder = RetryPolicy().ladder
    assert ladder_changes(ladder, 1, spec, args, kwargs) == {}
    assert dict(ladder_changes(ladder, 3, spec, args, kwargs)) == expected
    assert ladder_changes(ladder, 9, spec, args, kwargs) == ladder_changes(
        ladder, 3, spec, args, kwargs
    )


def test_ladder_steps_accumulate() -> None:
    ladder = RetryPolicy(
        ladder=({"prefill_step_size": 256}, {"max_tokens": 128})
    ).ladder
    spec = CallSpec("f", frozenset({"max_tokens", "prefill_step_size"}))
    assert dict(ladder_changes(ladder, 3, spec, (), {"max_tokens": 4096})) == {
        "prefill_step_size": 256,
        "max_tokens": 128,
    }


def test_call_spec_from_callable() -> None:
    def generate(
        model: Any, prompt: str, /, image: Any = None, *, max_tokens: int = 256
    ) -> None: ...

    def open_ended(model: Any, max_tokens: int = 100, **kwargs: Any) -> None: ...

    spec = CallSpec.from_callable(generate)
    assert spec.name.endswith("generate")
    assert spec.accepted_kwargs == {"image", "max_tokens"}
    assert dict(spec.defaults) == {"image": None, "max_tokens": 256}
    assert dict(spec.positions) == {"model": 0, "prompt": 1, "image": 2}
    other = CallSpec.from_callable(open_ended, bound=True)
    assert other.accepted_kwargs is None
    assert dict(other.positions) == {"max_tokens": 0}
    assert CallSpec.from_callable(len).accepted_kwargs == frozenset()


def test_a_positional_budget_is_replaced_in_place() -> None:
    seen: list[tuple[Any, ...]] = []

    @retry(policy=_fast())
    def generate(prompt: str, max_tokens: int = 2048) -> str:
        seen.append((prompt, max_tokens))
        if len(seen) < 3:
            raise MemoryError
        return "ok"

    assert generate("p", 1000) == "ok"
    assert seen == [("p", 1000), ("p", 512), ("p", 256)]


def test_methods_classmethods_and_staticmethods() -> None:
    class Model:
        calls: ClassVar[list[int]] = []

        @retry(policy=_fast())
        def generate(self, prompt: str, max_tokens: int = 2048) -> str:
            self.calls.append(max_tokens)
            if len(self.calls) % 2:
                raise MemoryError
            return f"{prompt}:{max_tokens}"

        @retry(policy=_fast())
        @classmethod
        def build(cls, size: int = 900) -> int:
            return size

        @retry(policy=_fast())
        @staticmethod
        def helper(max_tokens: int = 2048) -> int:
            if not Model.calls or Model.calls[-1] != -1:
                Model.calls.append(-1)
                raise MemoryError
            return max_tokens

    model = Model()
    assert model.generate("a", 700) == "a:512"
    assert model.generate("b") == "b:512"
    assert Model.build() == 900
    assert Model.helper() == 512
    assert Model.helper.__name__ == "helper"


def test_signature_and_introspection_are_preserved() -> None:
    def generate(prompt: str, max_tokens: int = 2048) -> str:
        """Doc."""
        return prompt

    def stream(prompt: str) -> Iterator[str]:
        yield prompt

    wrapped, wrapped_stream = retry(generate), retry()(stream)
    assert inspect.signature(wrapped) == inspect.signature(generate)
    assert (wrapped.__name__, wrapped.__doc__) == ("generate", "Doc.")
    assert wrapped.__wrapped__ is generate  # type: ignore[attr-defined]
    assert inspect.isgeneratorfunction(wrapped_stream)
    assert list(wrapped_stream("x")) == ["x"]


def test_async_callables_are_refused_at_decoration() -> None:
    async def agen() -> None: ...

    with pytest.raises(TypeError, match="async"):
        retry(agen)


def test_overrides_are_checked_at_decoration() -> None:
    with pytest.raises(ValueError, match="attempts"):
        retry(attempts=0)
    with pytest.raises(TypeError):
        retry(atempts=2)


def test_global_config_applies_to_decorated_functions_at_call_time() -> None:
    flaky_a, flaky_b = Flaky(*[MemoryError()] * 9), Flaky(*[MemoryError()] * 9)
    plain, five = retry(flaky_a), retry(attempts=5)(flaky_b)
    configure(attempts=2, wait_base=0.0, wait_max=0.0)
    with pytest.raises(MemoryError):
        plain()
    with pytest.raises(MemoryError):
        five()
    assert (len(flaky_a.calls), len(flaky_b.calls)) == (2, 5)


def test_overrides_that_no_longer_fit_the_default_fall_back_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flaky = Flaky(ValueError("bad"))
    wrapped = retry(wait_base=2.0)(flaky)
    configure(wait_max=0.5, wait_base=0.0)
    with (
        caplog.at_level(logging.WARNING, logger="mlx_vlm_safe"),
        pytest.raises(ValueError, match="bad"),
    ):
        wrapped()
    assert any("do not fit" in r.getMessage() for r in caplog.records)


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


def test_retries_disabled_calls_once_and_plainly() -> None:
    flaky = Flaky(MemoryError(), MemoryError())
    wrapped = retry(policy=_fast())(flaky)
    with disabled():
        with pytest.raises(MemoryError) as info:
            wrapped()
        assert last_attempts() == ()
    assert len(flaky.calls) == 1
    assert not hasattr(info.value, "mlx_vlm_safe_attempts")
    assert wrapped() == "ok"


def test_nested_retry_loops_collapse_into_the_outer_one() -> None:
    inner_calls: list[int] = []

    @retry(policy=_fast(attempts=3))
    def inner() -> str:
        inner_calls.append(1)
        raise MemoryError

    @retry(policy=_fast(attempts=3))
    def outer() -> str:
        return call_with_retry(inner, (), {}, spec=SPEC, policy=_fast())

    @retry(policy=_fast(attempts=3))
    def streaming() -> Iterator[str]:
        yield inner()

    with pytest.raises(MemoryError):
        outer()
    assert len(inner_calls) == 3  # not 3 x 3 x 3
    assert [r.number for r in last_attempts()] == [1, 2, 3]
    inner_calls.clear()
    with pytest.raises(MemoryError):
        list(streaming())
    assert len(inner_calls) == 3


def test_hooks_see_retries_and_the_give_up_and_a_raising_hook_is_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken:
        def on_retry(self, details: RetryDetails) -> None:
            raise RuntimeError("hook bug")

        def on_give_up(self, details: RetryDetails) -> None:
            raise RuntimeError("hook bug")

    hooks, time = Hooks(), FakeTime([1.0])
    policy = RetryPolicy(hooks=(Broken(), hooks), wait_base=1.0, wait_max=1.5)
    error = MemoryError("oom")
    flaky = Flaky(MemoryError(), MemoryError(), error)
    with (
        caplog.at_level(logging.WARNING, logger="mlx_vlm_safe.retry"),
        pytest.raises(MemoryError) as info,
    ):
        call_with_retry(
            flaky,
            (),
            {"max_tokens": 4096},
            spec=SPEC,
            policy=policy,
            runtime=time.runtime(),
        )
    assert info.value is error
    assert [(d.attempt, d.wait, dict(d.changes)) for d in hooks.retries] == [
        (1, 1.0, {"max_tokens": 512}),
        (2, 1.5, {"max_tokens": 256}),
    ]
    assert all(isinstance(d.exception, MemoryError) for d in hooks.retries)
    (give_up,) = hooks.give_ups
    assert (give_up.attempt, give_up.reason, give_up.exception) == (
        3,
        "attempts",
        error,
    )
    assert give_up.elapsed == 2.5
    assert sum("hook" in r.getMessage() for r in caplog.records) == 3


def test_a_first_attempt_caller_error_is_raised_as_is_without_hooks() -> None:
    hooks, error = Hooks(), ValueError("bad argument")
    with pytest.raises(ValueError, match="bad argument") as info:
        call_with_retry(Flaky(error), (), {}, spec=SPEC, policy=_fast(hooks=(hooks,)))
    assert info.value is error
    assert (hooks.retries, hooks.give_ups) == ([], [])
    (record,) = info.value.mlx_vlm_safe_attempts  # type: ignore[attr-defined]
    assert (record.number, record.error_type) == (1, "ValueError")
    assert getattr(info.value, "__notes__", []) == []


@pytest.mark.skipif(sys.version_info < (3, 11), reason="add_note is 3.11+")
def test_notes_give_one_line_per_attempt() -> None:
    with pytest.raises(MemoryError) as info:
        call_with_retry(Flaky(*[MemoryError()] * 3), (), {}, spec=SPEC, policy=_fast())
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
        call_with_retry(Flaky(*[OldStyle()] * 3), (), {}, spec=SPEC, policy=_fast())
    assert len(info.value.mlx_vlm_safe_attempts) == 3  # type: ignore[attr-defined]
    assert getattr(info.value, "__notes__", []) == []
    locked = Locked()
    with pytest.raises(Locked) as info2:
        call_with_retry(
            Flaky(locked, locked, locked), (), {}, spec=SPEC, policy=_fast()
        )
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
        call_with_retry(flaky, (), {}, spec=SPEC, policy=_fast(hooks=(hooks,)))
    assert info.value is interrupt
    assert not hasattr(interrupt, "mlx_vlm_safe_attempts")
    assert len(flaky.calls) == 2
    assert (len(hooks.retries), hooks.give_ups) == (1, [])
    assert [r.error_type for r in last_attempts()] == [
        "MemoryError",
        type(interrupt).__name__,
    ]


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


def test_last_attempts_after_a_plain_success_and_per_thread() -> None:
    assert retry(lambda: 5)() == 5
    (record,) = last_attempts()
    assert (record.number, record.error_type, dict(record.changes)) == (1, None, {})
    assert record.duration >= 0
    assert record.waited == 0.0
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(len(last_attempts())))
    thread.start()
    thread.join()
    assert seen == [0]
    assert last_attempts() == (record,)


def test_last_attempts_is_per_asyncio_task() -> None:
    ok = retry(policy=_fast())(Flaky())

    async def task(errors: int) -> int:
        flaky = retry(policy=_fast())(Flaky(*[MemoryError()] * errors))
        flaky()
        await asyncio.sleep(0.01)  # let the other task run its own call
        ok()
        await asyncio.sleep(0)
        return len(last_attempts())

    async def main() -> list[int]:
        return list(await asyncio.gather(task(2), task(0)))

    assert asyncio.run(main()) == [1, 1]


def test_logs_carry_structured_fields_and_never_the_prompt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "my secret prompt about cats"

    @retry(policy=_fast())
    def generate(prompt: str, max_tokens: int = 2048) -> str:
        if len(caplog.records) < 2:
            raise RuntimeError(f"[metal::malloc] Attempting to allocate for {prompt}")
        return prompt

    with caplog.at_level(logging.DEBUG, logger="mlx_vlm_safe"):
        assert generate(secret) == secret
    events = [r.mlx_vlm_safe_event for r in caplog.records]  # type: ignore[attr-defined]
    assert events == ["retry", "retry", "recovered"]
    first = caplog.records[0]
    assert first.mlx_vlm_safe_attempt == 1  # type: ignore[attr-defined]
    assert first.mlx_vlm_safe_error_type == "RuntimeError"  # type: ignore[attr-defined]
    assert first.mlx_vlm_safe_changes == {"max_tokens": 512}  # type: ignore[attr-defined]
    assert first.mlx_vlm_safe_callable.endswith("generate")  # type: ignore[attr-defined]
    assert first.mlx_vlm_safe_wait == 0.0  # type: ignore[attr-defined]
    for record in caplog.records:
        assert secret not in record.getMessage()
        assert "cats" not in repr(vars(record))


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
        assert call_with_retry(generate, (), {}, spec=SPEC, policy=_fast()) == "ok"
    finally:
        gc.enable()
    assert alive == [False]


def test_an_empty_result_is_retried_then_returned_as_is() -> None:
    results = iter(["", "", ""])
    spec = CallSpec("gen", frozenset({"max_tokens"}), is_empty=lambda r: r == "")
    assert (
        call_with_retry(lambda **kw: next(results), (), {}, spec=spec, policy=_fast())
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
    assert call_with_retry(flaky, (), {}, spec=spec, policy=_fast()) == "ok"
    assert [r.tokens for r in last_attempts()] == [3, 0, 7]


def test_a_stream_recovers_before_its_first_item_and_closes_early() -> None:
    finished: list[str] = []

    def stream_generate(max_tokens: int = 2048) -> Iterator[int]:
        try:
            if not finished:
                finished.append("failed")
                raise RuntimeError("[metal::malloc] Attempting to allocate 8 bytes")
            yield from range(max_tokens)
        finally:
            finished.append("closed")

    wrapped = retry(policy=_fast())(stream_generate)
    stream = wrapped(max_tokens=1000)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()  # type: ignore[attr-defined]
    assert finished == ["failed", "closed", "closed"]
    first, second = last_attempts()
    assert (first.error_type, first.tokens) == ("RuntimeError", 0)
    assert (second.changes, second.tokens) == ({"max_tokens": 512}, 3)


def test_a_stream_error_after_the_first_item_propagates_unchanged() -> None:
    error = MemoryError("late")

    def stream_generate() -> Iterator[str]:
        yield "a"
        raise error

    received: list[str] = []
    stream = stream_with_retry(stream_generate, (), {}, spec=SPEC, policy=_fast())
    with pytest.raises(MemoryError) as info:
        received.extend(stream)
    assert info.value is error
    assert received == ["a"]
    assert getattr(error, "__notes__", []) == []
    (record,) = last_attempts()
    assert (record.error_type, record.tokens) == ("MemoryError", 1)


def test_an_empty_stream_is_retried_and_finally_ends_empty() -> None:
    calls: list[int] = []

    @retry(policy=_fast())
    def stream_generate() -> Iterator[str]:
        calls.append(1)
        yield from ()

    assert list(stream_generate()) == []
    assert len(calls) == 3


def test_engine_and_patch_import_neither_wrapt_nor_asyncio() -> None:
    code = (
        "import sys\n"
        "import mlx_vlm_safe._retry, mlx_vlm_safe._patch, mlx_vlm_safe._configure\n"
        "bad = {'wrapt', 'asyncio', 'mlx', 'mlx_vlm', 'PIL'} & set(sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


_TYPING_SNIPPET = """
from collections.abc import Iterator
from mlx_vlm_safe import retry

@retry
def generate(prompt: str, max_tokens: int = 256) -> str:
    return prompt

@retry(attempts=5)
def stream(prompt: str) -> Iterator[str]:
    yield prompt

class Model:
    @retry
    def run(self, x: int) -> float:
        return x / 2

reveal_type(generate)
reveal_type(stream)
reveal_type(Model().run)
generate("a", max_tokens="many")
"""


def test_type_checkers_see_the_wrapped_signature(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("mypy")
    snippet = tmp_path / "typing_retry.py"
    snippet.write_text(_TYPING_SNIPPET)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
         "--cache-dir", str(tmp_path / "cache"), str(snippet)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    out = result.stdout
    assert 'Revealed type is "def (prompt: str, max_tokens: int =) -> str"' in out
    assert 'Revealed type is "def (prompt: str) -> typing.Iterator[str]"' in out
    assert 'Revealed type is "def (x: int) -> float"' in out
    assert 'Argument "max_tokens" to "generate" has incompatible type "str"' in out
    assert out.count("error:") == 1


def test_explicit_policy_with_overrides_is_checked_at_decoration() -> None:
    slow = RetryPolicy(wait_base=0.0, wait_max=0.5)
    with pytest.raises(ValueError, match="wait_max"):
        retry(policy=slow, wait_base=1.0)
    flaky = Flaky(MemoryError(), MemoryError(), MemoryError())
    with pytest.raises(MemoryError):
        retry(policy=slow, attempts=2, wait_max=0.0)(flaky)()
    assert len(flaky.calls) == 2


def test_bound_methods_and_callable_objects_can_be_wrapped_directly() -> None:
    class Model:
        def __init__(self) -> None:
            self.budgets: list[int] = []

        def generate(self, prompt: str, max_tokens: int = 2048) -> str:
            self.budgets.append(max_tokens)
            if len(self.budgets) < 2:
                raise MemoryError
            return prompt

        __call__ = generate

    model = Model()
    assert retry(policy=_fast())(model.generate)("p", 1000) == "p"
    assert model.budgets == [1000, 512]
    other = Model()
    assert retry(policy=_fast())(other)("q", max_tokens=300) == "q"
    assert other.budgets == [300, 300]
