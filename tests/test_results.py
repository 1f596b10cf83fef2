"""Empty results of every release shape, and how a stream's end is read."""

from __future__ import annotations

import dataclasses
from typing import Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlx_vlm_safe._results import Outcome, build_result, empty_result, finish_reason_of


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


@given(items=st.integers(1, 50), max_tokens=st.integers(1, 50))
def test_finish_reason_from_counts(items: int, max_tokens: int) -> None:
    """Before 0.6: 'length' exactly when the count reached max_tokens."""
    last = New(text="t", generation_tokens=items)
    outcome = finish_reason_of(last, items, max_tokens)
    assert outcome.generation_tokens == items
    assert outcome.finish_reason == ("length" if items >= max_tokens else "stop")


@pytest.mark.parametrize("reason", ["stop", "length"])
def test_finish_reason_from_the_release(reason: str) -> None:
    """0.6+: the release's own finish_reason wins."""
    last = New(text="t", generation_tokens=3, finish_reason=reason)
    assert finish_reason_of(last, 4, 100) == Outcome(reason, 3)  # type: ignore[arg-type]


def test_nothing_generated_is_empty() -> None:
    """No items, or a zero-token item, is 'empty' (unless 0 tokens were asked)."""
    assert finish_reason_of(None, 0, 8) == Outcome("empty", 0)
    zero = New(generation_tokens=0, finish_reason="length")
    assert finish_reason_of(zero, 1, 8) == Outcome("empty", 0)
    assert finish_reason_of(zero, 1, 0) == Outcome("length", 0)
