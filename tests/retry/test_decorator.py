"""``@retry``: the fault-schedule property through a decorated function, then cases."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import pathlib
from collections.abc import Callable, Iterator
from typing import Any, ClassVar
from unittest import mock

import pytest
from hypothesis import given

from mlx_vlm_safe import RetryPolicy, retry
from mlx_vlm_safe._retry import Runtime, _decorator, configure
from tests.conftest import run_mypy

from ._fakes import Flaky, fast
from ._schedules import SETTINGS, cases, check


def _decorate(
    policy: RetryPolicy, runtime: Runtime, fn: Callable[..., Any]
) -> Callable[..., Any]:
    """``@retry(policy=...)`` with the fake clock as the decorator's runtime."""
    with mock.patch.object(_decorator, "DEFAULT_RUNTIME", runtime):
        wrapped: Callable[..., Any] = retry(policy=policy)(fn)
    return wrapped


@SETTINGS
@given(cases())
def test_call_decorator_property(case: dict[str, Any]) -> None:
    check(case, stream=False, decorate=_decorate)


@SETTINGS
@given(cases())
def test_stream_decorator_property(case: dict[str, Any]) -> None:
    case["schedule"] = [
        dataclasses.replace(f, kind="before") if f.kind == "call" else f
        for f in case["schedule"]
    ]
    check(case, stream=True, decorate=_decorate)


def test_methods_classmethods_and_staticmethods() -> None:
    class Model:
        calls: ClassVar[list[int]] = []

        @retry(policy=fast())
        def generate(self, prompt: str, max_tokens: int = 2048) -> str:
            self.calls.append(max_tokens)
            if len(self.calls) % 2:
                raise MemoryError
            return f"{prompt}:{max_tokens}"

        @retry(policy=fast())
        @classmethod
        def build(cls, size: int = 900) -> int:
            return size

        @retry(policy=fast())
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
    assert retry(policy=fast())(model.generate)("p", 1000) == "p"
    assert model.budgets == [1000, 512]
    other = Model()
    assert retry(policy=fast())(other)("q", max_tokens=300) == "q"
    assert other.budgets == [300, 300]


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
    out = run_mypy(_TYPING_SNIPPET, tmp_path)
    assert 'Revealed type is "def (prompt: str, max_tokens: int =) -> str"' in out
    assert 'Revealed type is "def (prompt: str) -> typing.Iterator[str]"' in out
    assert 'Revealed type is "def (x: int) -> float"' in out
    assert 'Argument "max_tokens" to "generate" has incompatible type "str"' in out
    assert out.count("error:") == 1
