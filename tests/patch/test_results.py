"""Empty results of every release shape, and how a stream's end is read."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from typing import Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlx_vlm_safe import Outcome, last_outcome, retries_disabled
from mlx_vlm_safe._patch._results import (
    build_result,
    empty_result,
    last_end,
    outcome_of,
)
from mlx_vlm_safe._patch._wrappers import _observed
from mlx_vlm_safe._retry import CallSpec, call_runner


@dataclasses.dataclass
class Old:  # the 0.1.7-0.2.0 GenerationResult: eight fields, no defaults
    text: str
    token: Optional[int]  # noqa: UP045 - the annotation style of that release
    logprobs: Optional[list[float]]  # noqa: UP045
    prompt_tokens: int
    generation_tokens: int
    prompt_tps: float
    generation_tps: float
    peak_memory: float


@dataclasses.dataclass
class New:  # 0.3+: everything defaulted
    text: str = ""
    token: int | None = None
    generation_tokens: int = 0
    peak_memory: float = 0.0
    finish_reason: str | None = None


def test_result_without_defaults_gets_typed_zeros() -> None:
    """Old dataclasses are built with the zero of each annotated type."""
    result = build_result(Old, text="")
    assert result == Old("", None, None, 0, 0, 0.0, 0.0, 0.0)


def test_result_with_defaults_keeps_them() -> None:
    """New dataclasses keep their own defaults; only given fields change."""
    assert build_result(New, text="x") == New(text="x")


def test_empty_of_each_shape() -> None:
    """str -> '', tuple -> ('', zeroed stats), result -> text ''."""
    assert empty_result("str", None, None) == ""
    stats = {"input_tokens": 3, "prompt_tps": 1.5, "peak_memory": 0.2}
    text, zeroed = empty_result("tuple", None, stats)  # type: ignore[misc]
    assert text == ""
    assert zeroed == {"input_tokens": 0, "prompt_tps": 0.0, "peak_memory": 0.0}
    result = empty_result("result", New, None)
    assert isinstance(result, New)
    assert result.text == ""


def ended(items: list[object], max_tokens: object) -> Outcome | None:
    """Run items through the stream observer, as the patch does; read the outcome."""
    with retries_disabled():  # the observer alone, as inside generate()
        assert list(_observed(iter(items), max_tokens)) == items
        return outcome_of(last_end())


@given(items=st.integers(1, 50), max_tokens=st.integers(1, 50))
def test_finish_reason_from_counts(items: int, max_tokens: int) -> None:
    """Before 0.6: 'length' exactly when the count reached max_tokens."""
    stream = [New(text="t", generation_tokens=n) for n in range(1, items + 1)]
    outcome = ended(stream, max_tokens)
    assert outcome is not None
    assert outcome.generation_tokens == items
    assert outcome.finish_reason == ("length" if items >= max_tokens else "stop")


@pytest.mark.parametrize("reason", ["stop", "length"])
def test_finish_reason_from_the_release(reason: str) -> None:
    """0.6+: the release's own finish_reason wins."""
    last = New(text="t", generation_tokens=3, finish_reason=reason)
    assert ended([New(), last], 100) == Outcome(reason, 3)  # type: ignore[arg-type]


def test_nothing_generated_is_empty() -> None:
    """No items, or a zero-token item, is 'empty' (unless 0 tokens were asked)."""
    assert ended([], 8) == Outcome("empty", 0)
    zero = New(generation_tokens=0, finish_reason="length")
    assert ended([zero], 8) == Outcome("empty", 0)
    assert ended([zero], 0) == Outcome("length", 0)


def test_items_without_counts_are_counted() -> None:
    """str items (0.1.x) carry no count: the number of items is the count."""
    assert ended(["a", "b", "c"], 3) == Outcome("length", 3)
    assert ended(["a", "b"], 3) == Outcome("stop", 2)


def test_a_stream_that_raises_has_no_outcome() -> None:
    """An error mid-stream leaves no outcome: partial output is not an answer."""

    def failing() -> Iterator[object]:
        yield New(text="t", generation_tokens=1)
        raise RuntimeError("boom")

    with retries_disabled():
        with pytest.raises(RuntimeError, match="boom"):
            list(_observed(failing(), 8))
        assert outcome_of(last_end()) is None
        assert last_end() is not None  # the tokens it made are still known


def test_the_guard_yields_one_empty_item() -> None:
    """With an empty item, an empty stream yields it once; a full one does not."""
    marker = New(text="")
    assert list(_observed(iter([]), 8, marker)) == [marker]
    assert list(_observed(iter(["x"]), 8, marker)) == ["x"]


def test_outcome_survives_a_disabled_block_and_stays_in_its_thread() -> None:
    """The end recorded inside retries_disabled() is the last outcome after it,
    in this thread only."""
    seen: list[object] = []
    with retries_disabled():
        list(_observed(iter(["a", "b"]), 2))
    assert last_outcome() == Outcome("length", 2)
    thread = threading.Thread(target=lambda: seen.append(last_outcome()))
    thread.start()
    thread.join()
    assert seen == [None]


# --- where the outcome lives: any nesting of calls, blocks and bare streams ----

Program = list[tuple[str, object]]  # ("stream", n) | ("call" | "disabled", Program)

programs = st.recursive(
    st.lists(st.tuples(st.just("stream"), st.integers(0, 4)), max_size=3),
    lambda inner: st.lists(
        st.one_of(
            st.tuples(st.just("stream"), st.integers(0, 4)),
            st.tuples(st.sampled_from(["call", "disabled"]), inner),
        ),
        max_size=4,
    ),
    max_leaves=12,
)
MAX_TOKENS = 3
RUN = call_runner(CallSpec("program"))


def _run(program: Program) -> Outcome | None:
    """Run a program; return the outcome of the last stream it ran (the model)."""
    last: Outcome | None = None
    for op, arg in program:
        if op == "stream":
            items = [f"t{i}" for i in range(arg)]  # type: ignore[call-overload]
            assert list(_observed(iter(items), MAX_TOKENS)) == items
            last = ended_model(len(items))
        elif op == "call":
            inner = RUN(_run, (arg,), {})
            last = inner if _streams(arg) else last  # type: ignore[arg-type]
        else:
            with retries_disabled():
                inner = _run(arg)  # type: ignore[arg-type]
            last = inner if _streams(arg) else last  # type: ignore[arg-type]
    return last


def _streams(program: Program) -> bool:
    return any(op == "stream" or _streams(arg) for op, arg in program)  # type: ignore[arg-type]


def ended_model(items: int) -> Outcome:
    if items == 0:
        return Outcome("empty", 0)
    return Outcome("length" if items >= MAX_TOKENS else "stop", items)


@given(program=programs)
def test_last_outcome_is_the_last_stream_whatever_the_nesting(
    program: Program,
) -> None:
    """Streams inside retry-managed calls, retries_disabled() blocks, or neither,
    nested any way: last_outcome() afterwards is the last stream's outcome,
    and another thread never sees it."""
    seen: list[object] = []
    here = last_end()

    def fresh_thread() -> None:  # a new thread starts with an empty context
        expected = _run(program)
        seen.append((last_outcome(), expected))

    thread = threading.Thread(target=fresh_thread)
    thread.start()
    thread.join()
    [(got, expected)] = seen
    assert got == expected
    assert last_end() is here  # nothing leaked into this thread
