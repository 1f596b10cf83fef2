"""What a retry tells: hooks (a raising one is ignored) and structured logs."""

from __future__ import annotations

import logging

import pytest

from mlx_vlm_safe import RetryDetails, RetryPolicy, retry
from mlx_vlm_safe._retry import call_with_retry

from ._fakes import SPEC, FakeTime, Flaky, Hooks, fast


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


def test_logs_carry_structured_fields_and_never_the_prompt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "my secret prompt about cats"

    @retry(policy=fast())
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
