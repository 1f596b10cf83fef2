"""The property behind the engine, stream and decorator tests: fault schedules.

For any schedule of attempt outcomes, policy, caller kwargs and defaults,
``check`` runs the case through the engine (or a decorated fake function) and
checks attempts, waits, the ladder, the outcome and why the loop stopped.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterator
from itertools import pairwise
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from mlx_vlm_safe import AttemptRecord, RetryPolicy, last_attempts
from mlx_vlm_safe._retry import CallSpec, Runtime, call_with_retry, stream_with_retry

from ._fakes import (
    BASE_ONLY,
    EXCEPTIONS,
    RETRYABLE,
    RULES,
    FakeTime,
    Fault,
    Hooks,
    Target,
)

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


#: How the decorator tests wrap a fake function: ``decorate(policy, runtime, fn)``.
Decorate = Callable[[RetryPolicy, Runtime, Callable[..., Any]], Callable[..., Any]]


def _run(
    case: dict[str, Any], mode: str, stream: bool, decorate: Decorate | None
) -> Observed:
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
            rules=RULES,
        )
        runner: Any = stream_with_retry if stream else call_with_retry
        fn = target.stream if stream else target.call
        call = lambda: runner(  # noqa: E731
            fn, (prompt,), kwargs, spec=spec, policy=policy, runtime=time.runtime()
        )
        accepted, defaults = case["accepted"], case["defaults"]
    else:
        assert decorate is not None
        wrapped = decorate(policy, time.runtime(), _fake_function(target, stream))
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


def check(case: dict[str, Any], stream: bool, decorate: Decorate | None = None) -> None:
    """Run ``case`` through the engine, or through ``decorate`` if given."""
    mode = "engine" if decorate is None else "decorator"
    observed = _run(case, mode, stream, decorate)
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


SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
