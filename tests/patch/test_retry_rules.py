"""What the retry engine is told about mlx and mlx-vlm: the same verdicts as before.

These rows lived in the engine until it became generic; the patched
``generate()`` and the public ``@retry`` must classify exactly as they did.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import mlx_vlm_safe
from mlx_vlm_safe import RetryPolicy
from mlx_vlm_safe._patch._retry_rules import LADDER, RULES
from mlx_vlm_safe._retry import Verdict, explain

RETRY, NEVER = Verdict.RETRY, Verdict.NEVER


class _FakePILError(Exception):
    """Named like PIL's error, in a PIL-like module, but not an OSError."""


_FakePILError.__name__ = "UnidentifiedImageError"
_FakePILError.__module__ = "PIL.Image"


@pytest.mark.parametrize(
    ("exc", "verdict"),
    [
        (MemoryError(), RETRY),
        (RuntimeError("[metal::malloc] Attempting to allocate 1357 bytes"), RETRY),
        (RuntimeError("Attempting to allocate 9 bytes which is greater"), RETRY),
        (RuntimeError("CUDA Out Of Memory. Tried to allocate 2 GiB"), RETRY),
        (RuntimeError("[cuda::malloc] failed"), RETRY),
        (RuntimeError("cudaMalloc returned 2"), RETRY),
        (RuntimeError("std::bad_alloc"), RETRY),
        (AttributeError("'NoneType' object has no attribute 'token'"), RETRY),
        (AttributeError("'NoneType' object has no attribute 'prompt_tokens'"), RETRY),
        (AttributeError("'NoneType' object has no attribute 'tokens'"), NEVER),
        (AttributeError("'GenerationResult' object has no attribute 'texta'"), NEVER),
        (RuntimeError("shape mismatch"), NEVER),
        (ValueError("max_tokens must be positive"), NEVER),
        (NameError("x"), NEVER),
        (UnboundLocalError("cannot access local variable 'y'"), NEVER),
        (OSError("unreadable"), NEVER),
        (ImportError("no module named torch"), NEVER),
        (Exception("out of memory"), NEVER),  # only RuntimeError is read by message
        (KeyboardInterrupt(), NEVER),
    ],
    ids=repr,
)
def test_mlx_vlm_failures(exc: BaseException, verdict: Verdict) -> None:
    assert explain(exc, None, RULES)[0] is verdict


@pytest.mark.parametrize(
    "exc",
    [
        KeyError("max_recommended_working_set_size"),
        RuntimeError(
            "[metal::device_info] Cannot get device info without metal backend"
        ),
    ],
)
def test_release_defects_are_never_retried_even_when_the_user_adds_them(
    exc: Exception,
) -> None:
    policy = RetryPolicy(retry_on=(RuntimeError, KeyError, lambda e: True))
    verdict, why = explain(exc, policy, RULES)
    assert verdict is NEVER
    assert "non-Metal" in why


def test_the_reasons_are_those_logs_and_notes_always_gave() -> None:
    assert explain(_FakePILError(), None, RULES)[1] == "missing or unreadable input"
    assert explain(NameError("x"), None, RULES)[1] == (
        "code defect (mlx-vlm's max_tokens=0 UnboundLocalError)"
    )


_MARKERS = (
    "[metal::malloc]",
    "attempting to allocate",
    "out of memory",
    "[cuda::malloc]",
    "cudamalloc",
    "std::bad_alloc",
)


@given(
    st.text(max_size=40),
    st.sampled_from((*_MARKERS, "", "[metal::device_info]")),
    st.text(max_size=40),
    st.booleans(),
)
def test_runtime_errors_are_retried_exactly_when_they_report_allocation(
    before: str, marker: str, after: str, upper: bool
) -> None:
    message = before + (marker.upper() if upper else marker) + after
    lowered = message.lower()
    expected = (
        RETRY
        if any(m in lowered for m in _MARKERS) and "[metal::device_info]" not in lowered
        else NEVER
    )
    assert explain(RuntimeError(message), None, RULES)[0] is expected


def test_the_default_ladder_lowers_max_tokens() -> None:
    assert [dict(step) for step in LADDER] == [{"max_tokens": 512}, {"max_tokens": 256}]
    assert RetryPolicy().ladder is None  # None: the target's own, this one


def test_public_retry_knows_mlx_failures_and_the_ladder() -> None:
    """``@mlx_vlm_safe.retry`` around a user's function gets what generate gets."""
    seen: list[Any] = []

    @mlx_vlm_safe.retry(wait_base=0.0, wait_max=0.0)
    def describe(prompt: str, max_tokens: int = 1000) -> str:
        seen.append(max_tokens)
        if len(seen) < 3:
            raise RuntimeError("[metal::malloc] Attempting to allocate 99 bytes")
        return prompt

    assert describe("x") == "x"
    assert seen == [1000, 512, 256]


def test_the_engines_own_retry_knows_neither() -> None:
    from mlx_vlm_safe._retry import retry

    seen: list[Any] = []

    @retry(wait_base=0.0, wait_max=0.0)
    def describe(prompt: str, max_tokens: int = 1000) -> str:
        seen.append(max_tokens)
        raise RuntimeError("[metal::malloc] Attempting to allocate 99 bytes")

    with pytest.raises(RuntimeError):
        describe("x")
    assert seen == [1000]


def test_the_public_retry_says_what_it_knows() -> None:
    from mlx_vlm_safe._retry import retry

    public = mlx_vlm_safe.retry.__doc__ or ""
    assert "lowers\n    max_tokens (512, then 256)" in public
    assert "max_tokens" not in (retry.__doc__ or "")
    assert mlx_vlm_safe.retry.__qualname__ == "retry"
