"""Any fault, anywhere in a real generation: what reaches the caller.

Hypothesis draws fault plans (exception type, ``BaseException`` subclasses
included; the point: during prefill, after k tokens, at the end; how many
generations it hits) and plants each into the real tiny model on the installed
release, through the patched ``generate()`` and ``stream_generate()``. For
every plan:

* the caller never sees ``AttributeError: 'NoneType' ...`` (the defect);
* a ``BaseException`` that is not an ``Exception`` reaches the caller as the
  very object raised, untouched, after exactly one attempt;
* partial output is never passed off as complete: ``generate()`` raises or
  returns all ``max_tokens`` tokens; a stream yields at most the tokens made
  before the fault, then raises;
* the exception the caller gets is the object that was raised, with the
  traceback down to the frame that raised it.

Bounded for CI: ``MAX_EXAMPLES`` examples per test, each a few generations of
at most 6 tokens on the tiny model (the whole file: well under a minute).
"""

from __future__ import annotations

import dataclasses
import os
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import mlx_vlm_safe
from mlx_vlm_safe.testing import FaultPlan, FaultRecord, plant_fault

pytestmark = pytest.mark.model

MAX_EXAMPLES = 150
ATTEMPTS = 3  # the default policy's attempts; waits are configured to zero
OOM = "[metal::malloc] Attempting to allocate 137438953472 bytes"


class AppError(Exception):
    """An application's own error: not retryable."""


class Cancelled(BaseException):
    """A framework's own BaseException (like trio's or anyio's cancellation)."""


# Instances are made fresh per example: the caller must get this very object.
INSTANCES: dict[str, Callable[[], BaseException]] = {
    "MemoryError": lambda: MemoryError("planted"),
    "RuntimeError(oom)": lambda: RuntimeError(OOM),
    "RuntimeError": lambda: RuntimeError("decoder failed"),
    "ValueError": lambda: ValueError("bad argument"),
    "TypeError": lambda: TypeError("bad type"),
    "AttributeError": lambda: AttributeError("model has no attribute 'x'"),
    "AppError": lambda: AppError("app"),
    "KeyboardInterrupt": KeyboardInterrupt,
    "SystemExit": lambda: SystemExit(3),
    "GeneratorExit": GeneratorExit,
    "Cancelled": Cancelled,
}
CLASSES: tuple[type[BaseException], ...] = (
    MemoryError,
    ValueError,
    KeyboardInterrupt,
    SystemExit,
    Cancelled,
)

exceptions = st.one_of(
    st.sampled_from(sorted(INSTANCES)).map(lambda name: INSTANCES[name]()),
    st.sampled_from(CLASSES),
)
points = st.one_of(st.just("prefill"), st.integers(0, 7), st.just("end"))
plans = st.builds(
    FaultPlan,
    exception=exceptions,
    point=points,
    times=st.sampled_from([None, 0, 1, 2]),
)
PROPERTY = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,  # real generations on a shared 2-core machine
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


class Subject:
    """The tiny model and the release, with a short repr for hypothesis' reports.

    Hypothesis prints every argument of an example (field by field for a
    dataclass); some releases' processors raise in ``repr()`` (0.3.5: a
    detokenizer that cannot be deep-copied), which would hide the real result.
    """

    def __init__(self, tiny: Any, mlx_vlm: Any, release: Any, exports: Any) -> None:
        self.tiny, self.mlx_vlm = tiny, mlx_vlm
        self.release, self.exports = release, exports

    def tokens_for(self, max_tokens: int) -> int:
        """What a call asking for ``max_tokens`` really makes on this release."""
        tokens: int = self.release.tokens_for(max_tokens)
        return tokens

    def __repr__(self) -> str:
        return f"Subject(mlx-vlm {self.mlx_vlm.__version__}, tiny model)"

    def generate(self, max_tokens: int) -> Any:
        return self.tiny.call(self.mlx_vlm.generate, max_tokens=max_tokens)

    def stream(self, max_tokens: int) -> Iterator[Any]:
        stream: Iterator[Any] = self.tiny.stream(
            self.exports.stream_generate, max_tokens=max_tokens
        )
        return stream


@pytest.fixture
def subject(tiny: Any, mlx_vlm: Any, release: Any, exports: Any) -> Subject:
    return Subject(tiny, mlx_vlm, release, exports)


@pytest.fixture(autouse=True)
def _no_waits() -> Iterator[None]:
    mlx_vlm_safe.configure(wait_base=0.0, wait_max=0.0)
    yield
    mlx_vlm_safe.reset_config()


@dataclasses.dataclass
class Observed:
    """What the caller saw under one plan."""

    plan: FaultPlan
    max_tokens: int
    record: FaultRecord
    caught: BaseException | None
    result: Any
    items: list[Any]
    attempts: tuple[mlx_vlm_safe.AttemptRecord, ...]

    @property
    def interrupt(self) -> bool:
        """The planted exception is a BaseException but not an Exception."""
        exc = self.plan.exception
        kind = exc if isinstance(exc, type) else type(exc)
        return not issubclass(kind, Exception)

    @property
    def reaches_point(self) -> bool:
        """Whether a generation of ``max_tokens`` gets to the planted point."""
        before = self.plan.tokens_before
        return before is None or before <= self.max_tokens


def _observe(
    plan: FaultPlan, max_tokens: int, run: Callable[[list[Any]], Any]
) -> Observed:
    items: list[Any] = []
    result: Any = None
    caught: BaseException | None = None
    with plan.plant() as record:
        try:
            result = run(items)
        except BaseException as exc:  # KeyboardInterrupt and SystemExit too
            caught = exc
    attempts = mlx_vlm_safe.last_attempts()
    return Observed(plan, max_tokens, record, caught, result, items, attempts)


# ---------------------------------------------------------------- the checks


def _check_common(seen: Observed) -> None:
    caught, plan, record = seen.caught, seen.plan, seen.record
    if caught is not None:
        message = str(caught)
        assert not (isinstance(caught, AttributeError) and "NoneType" in message), (
            f"the None defect reached the caller: {caught!r}"
        )
        _check_is_the_planted_object(caught, plan)
        assert record.fired >= 1, "an exception reached the caller, none was planted"
    if plan.times == 0 or not seen.reaches_point:
        assert record.fired == 0
    elif record.calls:
        assert record.fired >= 1, f"{plan} never fired in {record}"
    if seen.interrupt and record.fired:
        _check_untouched_interrupt(seen)
    _check_tokens_let_through(seen)


def _check_is_the_planted_object(caught: BaseException, plan: FaultPlan) -> None:
    """The very object (or, for a class, its type), with its own traceback."""
    if isinstance(plan.exception, BaseException):
        assert caught is plan.exception
    else:
        assert type(caught) is plan.exception
    frames = traceback.extract_tb(caught.__traceback__)
    assert frames, "the traceback was stripped"
    innermost = frames[-1]
    assert innermost.name == "fire"
    assert innermost.filename.endswith(os.path.join("testing", "_faults.py"))
    real = os.sep + "mlx_vlm" + os.sep
    assert any(real in f.filename for f in frames), "no frame of the real mlx-vlm"


def _check_untouched_interrupt(seen: Observed) -> None:
    """Ctrl-C and friends: one attempt, raised as is, nothing attached."""
    caught = seen.caught
    assert caught is not None, f"{seen.plan} fired but the call returned"
    assert seen.record.calls == 1, "a BaseException triggered a retry"
    assert len(seen.attempts) == 1
    assert seen.attempts[0].error_type == type(caught).__name__
    assert getattr(caught, "__notes__", None) is None
    assert not hasattr(caught, "mlx_vlm_safe_attempts")
    assert caught.__cause__ is None


def _check_tokens_let_through(seen: Observed) -> None:
    """The kit itself: k real tokens before the fault, all of them otherwise."""
    record, before = seen.record, seen.plan.tokens_before
    clean = record.calls - record.fired
    if before is None:
        assert record.tokens == record.calls * seen.max_tokens
    else:
        assert record.tokens == record.fired * before + clean * seen.max_tokens


# ---------------------------------------------------------------- the properties


@PROPERTY
@given(plan=plans, max_tokens=st.integers(1, 6))
@example(plan=FaultPlan(KeyboardInterrupt(), point="prefill"), max_tokens=4)
@example(
    plan=FaultPlan(MemoryError("transient"), point="prefill", times=1), max_tokens=4
)
@example(plan=FaultPlan(GeneratorExit(), point="end"), max_tokens=3)
@example(plan=FaultPlan(ValueError("mid-answer"), point=2), max_tokens=5)
def test_generate_raises_the_planted_error_or_returns_everything(
    subject: Subject, plan: FaultPlan, max_tokens: int
) -> None:
    """generate(): the planted object, or all max_tokens tokens; never a cut answer."""
    made = subject.tokens_for(max_tokens)
    seen = _observe(plan, made, lambda _: subject.generate(max_tokens))
    _check_common(seen)
    if seen.caught is None:
        assert seen.result is not None
        assert mlx_vlm_safe.last_outcome() == mlx_vlm_safe.Outcome("length", made)
        assert seen.attempts[-1].error_type is None
        assert seen.attempts[-1].tokens == made
    else:
        # Raised only after every attempt failed with the planted error.
        assert len(seen.attempts) == seen.record.calls == seen.record.fired
        assert {a.error_type for a in seen.attempts} == {type(seen.caught).__name__}
        assert seen.interrupt or len(seen.attempts) in (1, ATTEMPTS)


@PROPERTY
@given(plan=plans, max_tokens=st.integers(1, 6))
@example(plan=FaultPlan(KeyboardInterrupt(), point=2), max_tokens=4)
@example(
    plan=FaultPlan(MemoryError("transient"), point="prefill", times=1), max_tokens=4
)
@example(plan=FaultPlan(MemoryError("late"), point=3, times=1), max_tokens=5)
def test_stream_yields_only_what_was_made_then_raises(
    subject: Subject, plan: FaultPlan, max_tokens: int
) -> None:
    """stream_generate(): at most the tokens before the fault, then the error."""

    def run(items: list[Any]) -> None:
        items.extend(subject.stream(max_tokens))

    made = subject.tokens_for(max_tokens)
    seen = _observe(plan, made, run)
    _check_common(seen)
    before = plan.tokens_before
    if seen.caught is None:
        assert seen.items, "a stream that ends without a fault yields its tokens"
        assert mlx_vlm_safe.last_outcome() == mlx_vlm_safe.Outcome("length", made)
        last = getattr(seen.items[-1], "generation_tokens", made)
        assert last == made
    else:
        assert len(seen.items) <= (made if before is None else before)
        if seen.items:  # once text reached the consumer, nothing is retried
            assert seen.record.calls == 1


def test_generator_exit_raised_mid_stream_is_recorded_as_the_error(
    subject: Subject,
) -> None:
    """last_attempts() names the GeneratorExit the caller got, as for generate()."""
    planted = GeneratorExit()
    items: list[Any] = []
    with plant_fault(planted, after_tokens=1), pytest.raises(GeneratorExit) as info:
        items.extend(subject.stream(3))
    assert info.value is planted
    assert len(items) == 1
    assert [a.error_type for a in mlx_vlm_safe.last_attempts()] == ["GeneratorExit"]


# ---------------------------------------------------------------- the kit itself


def test_prefill_fault_fires_inside_the_first_forward_call(
    tiny: Any, mlx_vlm: Any
) -> None:
    """The prefill point is inside the language model, after the real set-up."""
    planted = MemoryError("prefill")
    original = type(tiny.model.language_model)
    with (
        plant_fault(planted, during_prefill=True) as fault,
        pytest.raises(MemoryError) as info,
        mlx_vlm_safe.retries_disabled(),
    ):
        tiny.call(mlx_vlm.generate)
    assert info.value is planted
    names = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert names[-2:] == ["__call__", "fire"]  # raised from the model call
    assert "generate_step" in names
    assert (fault.calls, fault.fired, fault.tokens) == (1, 1, 0)
    assert type(tiny.model.language_model) is original


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"point": -1}, ValueError),
        ({"point": "middle"}, ValueError),
        ({"point": True}, ValueError),
        ({"times": -1}, ValueError),
        ({"exception": "boom"}, TypeError),
    ],
)
def test_fault_plan_rejects_what_cannot_be_planted(
    kwargs: dict[str, Any], error: type[Exception]
) -> None:
    """A plan names a real exception and a point that exists."""
    fields: dict[str, Any] = {"exception": ValueError("x"), **kwargs}
    with pytest.raises(error, match="must be"):
        FaultPlan(**fields)


def test_plant_fault_rejects_a_prefill_point_after_tokens() -> None:
    """during_prefill is before the first token: no after_tokens with it."""
    with (
        pytest.raises(ValueError, match="after_tokens must stay 0"),
        plant_fault(ValueError(), after_tokens=2, during_prefill=True),
    ):
        pass
