"""The engine's classification: retry only what a second attempt can fix.

The engine knows no library: these tests use the generic table and rules of
their own. What it is told about mlx and mlx-vlm is tested with the patch
(``tests/patch/test_retry_rules.py``).
"""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from mlx_vlm_safe import RetryPolicy
from mlx_vlm_safe._retry import Verdict, explain
from mlx_vlm_safe._retry._classify import NO_RULES, TABLE, Rule, Rules

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


class _Glitch(RuntimeError):
    pass


#: A caller's rules, as a library wrapper would give them.
RULES = Rules(
    defects=(Rule(NEVER, (RuntimeError,), ("[dev::info]",), "no such device"),),
    table=(
        Rule(RETRY, (RuntimeError,), ("[dev::malloc]",), "allocation failed"),
        Rule(RETRY, (AttributeError,), ("'nonetype'",), "empty result"),
        Rule(NEVER, ("PIL:UnidentifiedImageError",), (), "unreadable image"),
    ),
)


@pytest.mark.parametrize(
    ("exc", "verdict"),
    [
        (MemoryError(), RETRY),
        (_MemorySub("numpy-style"), RETRY),
        (RuntimeError("[dev::malloc] Attempting to allocate 1357 bytes"), NEVER),
        (AttributeError("'NoneType' object has no attribute 'token'"), NEVER),
        (RuntimeError("shape mismatch"), NEVER),
        (ValueError("budget must be positive"), NEVER),
        (TypeError("unexpected keyword argument 'foo'"), NEVER),
        (KeyError("pixel_values"), NEVER),
        (NameError("x"), NEVER),
        (UnboundLocalError("cannot access local variable 'y'"), NEVER),
        (OSError("unreadable"), NEVER),
        (FileNotFoundError("cat.png"), NEVER),
        (ImportError("no module named torch"), NEVER),
        (ModuleNotFoundError("no module named torch"), NEVER),
        (_Custom("anything"), NEVER),
        (Exception("out of memory"), NEVER),
        (KeyboardInterrupt(), NEVER),
        (SystemExit(1), NEVER),
        (GeneratorExit(), NEVER),
        (_CustomBase(), NEVER),
    ],
    ids=repr,
)
def test_generic_table(exc: BaseException, verdict: Verdict) -> None:
    """Without a caller's rules: memory errors only, never a RuntimeError."""
    assert explain(exc)[0] is verdict
    assert explain(exc, None, NO_RULES)[0] is verdict


@pytest.mark.parametrize(
    ("exc", "verdict"),
    [
        (RuntimeError("[DEV::MALLOC] failed"), RETRY),
        (AttributeError("'NoneType' object has no attribute 'token'"), RETRY),
        (AttributeError("'Result' object has no attribute 'texta'"), NEVER),
        (RuntimeError("shape mismatch"), NEVER),
        (MemoryError(), RETRY),
        (ValueError("bad"), NEVER),
    ],
    ids=repr,
)
def test_the_callers_rules_come_before_the_generic_table(
    exc: BaseException, verdict: Verdict
) -> None:
    assert explain(exc, None, RULES)[0] is verdict


def test_the_callers_defects_are_never_retried_even_when_the_user_adds_them() -> None:
    policy = RetryPolicy(retry_on=(RuntimeError, lambda e: True))
    exc = _Glitch("[dev::info] no device")
    assert explain(exc, policy, RULES) == (NEVER, "no such device")
    assert explain(exc, policy)[0] is RETRY  # without the rules: the user's


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


def test_a_type_is_matched_by_name_without_importing_its_package() -> None:
    assert explain(_FakePILError(), None, RULES)[1] == "unreadable image"
    code = (
        "import sys; from mlx_vlm_safe._retry import Rules, Rule, Verdict, explain;"
        "rules = Rules(table=(Rule(Verdict.NEVER, ('PIL:Nope',), (), 'x'),));"
        "[explain(e, None, rules) for e in (ValueError(), OSError(), MemoryError())];"
        "assert 'PIL' not in sys.modules, 'PIL imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_type_cache_does_not_mix_up_messages_or_rules() -> None:
    oom = RuntimeError("[dev::malloc] Attempting to allocate 10 bytes")
    other = RuntimeError("shape mismatch")
    assert [explain(e, None, RULES)[0] for e in (oom, other, oom, other)] == [
        RETRY,
        NEVER,
        RETRY,
        NEVER,
    ]
    assert explain(oom)[0] is NEVER  # another caller's rules: its own cache
    assert [explain(ValueError("x"))[0] for _ in range(3)] == [NEVER] * 3
    none = AttributeError("'NoneType' object has no attribute 'token'")
    assert [explain(none, None, r)[0] for r in (NO_RULES, RULES)] == [NEVER, RETRY]


def test_a_broken_str_does_not_break_classification() -> None:
    class Unprintable(RuntimeError):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert explain(Unprintable())[0] is NEVER


def test_the_table_is_data_and_every_row_says_why() -> None:
    for rule in TABLE + RULES.rows():
        assert isinstance(rule, Rule)
        assert rule.why
        assert all(m == m.lower() for m in rule.message)
    assert {rule.verdict for rule in TABLE} == {RETRY, NEVER}
    assert RULES.rows() == RULES.defects + RULES.table + TABLE
