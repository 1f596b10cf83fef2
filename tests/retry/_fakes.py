"""Fakes for the retry engine's tests: faults and time, nothing else.

A fake clock that attempts and waits advance, a recording sleep, a scripted
``uniform``; targets that raise on schedule; a hook that records.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

from mlx_vlm_safe import RetryDetails, RetryPolicy
from mlx_vlm_safe._retry import CallSpec, Rule, Rules, Runtime, Verdict


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

# fmt: off
#: What a caller tells the engine about its target's failures (as the patch
#: does for mlx-vlm), matching the faults above: the engine's own table knows
#: only ``MemoryError``.
RULES = Rules(
    defects=(Rule(Verdict.NEVER, (RuntimeError,), ("[metal::device_info]",),
                  "a defect of the target"),),
    table=(
        Rule(Verdict.RETRY, (RuntimeError,), ("[metal::malloc]",), "allocation"),
        Rule(Verdict.RETRY, (AttributeError,), ("'nonetype'",), "empty result"),
    ),
)
# fmt: on
#: The target's own ladder, used where the policy sets none.
LADDER = ({"max_tokens": 512}, {"max_tokens": 256})


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


def fast(**changes: Any) -> RetryPolicy:
    return RetryPolicy(**{"wait_base": 0.0, "wait_max": 0.0, **changes})


SPEC = CallSpec(
    "flaky",
    frozenset({"max_tokens", "prefill_step_size"}),
    rules=RULES,
    ladder=LADDER,
)
