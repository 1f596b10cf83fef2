"""The classification table: retry only what a second attempt can fix."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlx_vlm_safe import RetryPolicy
from mlx_vlm_safe._retry import Verdict, explain
from mlx_vlm_safe._retry._classify import DEFECTS, TABLE, Rule

RETRY, NEVER = Verdict.RETRY, Verdict.NEVER


class _Custom(Exception):
    pass


class _CustomBase(BaseException):
    pass


class _MemorySub(MemoryError):
    pass


class _FakePILError(Exception):
    """Named like PIL's error, in a PIL-like module, but not an OSError."""


_FakePILError.__name__ = "UnidentifiedImageError"
_FakePILError.__module__ = "PIL.Image"


@pytest.mark.parametrize(
    ("exc", "verdict"),
    [
        (MemoryError(), RETRY),
        (_MemorySub("numpy-style"), RETRY),
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
        (TypeError("unexpected keyword argument 'foo'"), NEVER),
        (KeyError("pixel_values"), NEVER),
        (NameError("x"), NEVER),
        (UnboundLocalError("cannot access local variable 'y'"), NEVER),
        (OSError("unreadable"), NEVER),
        (FileNotFoundError("cat.png"), NEVER),
        (ImportError("no module named torch"), NEVER),
        (ModuleNotFoundError("no module named torch"), NEVER),
        (_Custom("anything"), NEVER),
        (Exception("out of memory"), NEVER),  # only RuntimeError is read by message
        (KeyboardInterrupt(), NEVER),
        (SystemExit(1), NEVER),
        (GeneratorExit(), NEVER),
        (_CustomBase(), NEVER),
    ],
    ids=repr,
)
def test_table(exc: BaseException, verdict: Verdict) -> None:
    assert explain(exc)[0] is verdict


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
    verdict, why = explain(exc, policy)
    assert verdict is NEVER
    assert "non-Metal" in why


def test_user_types_and_predicates_are_retried_and_come_before_the_table() -> None:
    by_type = RetryPolicy(retry_on=(ValueError,))
    by_predicate = RetryPolicy(retry_on=(lambda e: "transient" in str(e),))
    assert explain(ValueError("bad"), by_type)[0] is RETRY
    assert explain(ValueError("bad"))[0] is NEVER
    assert explain(_Custom("transient glitch"), by_predicate)[0] is RETRY
    assert explain(_Custom("permanent"), by_predicate)[0] is NEVER
    assert explain(ValueError("bad"), by_type)[1] == "listed in RetryPolicy.retry_on"


def test_a_raising_predicate_is_no_match_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(exc: Exception) -> bool:
        raise ZeroDivisionError

    policy = RetryPolicy(retry_on=(broken,))
    with caplog.at_level(logging.WARNING, logger="mlx_vlm_safe"):
        assert explain(_Custom(), policy)[0] is NEVER
        assert explain(MemoryError(), policy)[0] is RETRY
    assert any("predicate" in r.getMessage() for r in caplog.records)


def test_base_exceptions_are_never_retried_even_if_a_predicate_says_so() -> None:
    policy = RetryPolicy(retry_on=(lambda e: True,))
    assert explain(KeyboardInterrupt(), policy) == (
        NEVER,
        "not an Exception: never caught",
    )


def test_pil_error_is_matched_by_name_without_importing_pil() -> None:
    assert explain(_FakePILError())[1] == "missing or unreadable input"
    code = (
        "import sys; from mlx_vlm_safe._retry import explain;"
        "explain(ValueError()); explain(OSError()); explain(MemoryError());"
        "assert 'PIL' not in sys.modules, 'PIL imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_type_cache_does_not_mix_up_messages() -> None:
    oom = RuntimeError("[metal::malloc] Attempting to allocate 10 bytes")
    other = RuntimeError("shape mismatch")
    assert [explain(e)[0] for e in (oom, other, oom, other)] == [
        RETRY,
        NEVER,
        RETRY,
        NEVER,
    ]
    assert [explain(ValueError("x"))[0] for _ in range(3)] == [NEVER] * 3


def test_a_broken_str_does_not_break_classification() -> None:
    class Unprintable(RuntimeError):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert explain(Unprintable())[0] is NEVER


def test_the_table_is_data_and_every_row_says_why() -> None:
    for rule in DEFECTS + TABLE:
        assert isinstance(rule, Rule)
        assert rule.why
        assert all(m == m.lower() for m in rule.message)
    assert all(rule.verdict is NEVER for rule in DEFECTS)
    assert {rule.verdict for rule in TABLE} == {RETRY, NEVER}


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
    assert explain(RuntimeError(message))[0] is expected
