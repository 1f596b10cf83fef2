"""The ladder (``CallSpec``, ``ladder_changes``): attempt 1 as called, then smaller."""

from __future__ import annotations

from typing import Any

import pytest

from mlx_vlm_safe import RetryPolicy, last_attempts, retry
from mlx_vlm_safe._retry import CallSpec, call_with_retry
from mlx_vlm_safe._retry._ladder import ladder_changes

from ._fakes import LADDER, SPEC, Flaky, fast


def test_attempt_one_gets_the_callers_objects_then_the_ladder_applies() -> None:
    image, flaky = object(), Flaky(MemoryError(), MemoryError())
    result = call_with_retry(
        flaky, (image,), {"max_tokens": 1000, "image": image}, spec=SPEC, policy=fast()
    )
    assert result == "ok"
    assert [kw["max_tokens"] for _, kw in flaky.calls] == [1000, 512, 256]
    assert all(args[0] is image and kw["image"] is image for args, kw in flaky.calls)
    assert [dict(r.changes) for r in last_attempts()] == [
        {},
        {"max_tokens": 512},
        {"max_tokens": 256},
    ]


@pytest.mark.parametrize(
    ("spec", "args", "kwargs", "expected"),
    [
        (SPEC, (), {"max_tokens": 100}, {}),  # a small budget is never raised
        (SPEC, (), {"max_tokens": None}, {"max_tokens": 256}),  # None: unbounded
        (SPEC, (), {}, {"max_tokens": 256}),  # accepted, unknown default
        (CallSpec("f", frozenset()), (), {}, {}),  # not accepted: never injected
        (CallSpec("f", frozenset()), (), {"max_tokens": 999}, {"max_tokens": 256}),
        (CallSpec("f", None, {"max_tokens": 2048}), (), {}, {"max_tokens": 256}),
        (CallSpec("f", None, {"other": 1}), (), {}, {}),  # unknown and unlisted
        (CallSpec("f", None, {"max_tokens": 128}), (), {}, {}),  # default is lower
        (
            CallSpec("f", None, positions={"max_tokens": 1}),
            ("p", 300),
            {},
            {"max_tokens": 256},
        ),
        (CallSpec("f", None, {"max_tokens": "x"}), (), {}, {}),  # not a budget
    ],
)
def test_ladder_changes(
    spec: CallSpec, args: tuple[Any, ...], kwargs: dict[str, Any], expected: dict
) -> None:
    ladder = LADDER
    assert ladder_changes(ladder, 1, spec, args, kwargs) == {}
    assert dict(ladder_changes(ladder, 3, spec, args, kwargs)) == expected
    assert ladder_changes(ladder, 9, spec, args, kwargs) == ladder_changes(
        ladder, 3, spec, args, kwargs
    )


def test_ladder_steps_accumulate() -> None:
    ladder = RetryPolicy(
        ladder=({"prefill_step_size": 256}, {"max_tokens": 128})
    ).ladder
    spec = CallSpec("f", frozenset({"max_tokens", "prefill_step_size"}))
    assert dict(ladder_changes(ladder, 3, spec, (), {"max_tokens": 4096})) == {
        "prefill_step_size": 256,
        "max_tokens": 128,
    }


def test_call_spec_from_callable() -> None:
    def generate(
        model: Any, prompt: str, /, image: Any = None, *, max_tokens: int = 256
    ) -> None: ...

    def open_ended(model: Any, max_tokens: int = 100, **kwargs: Any) -> None: ...

    spec = CallSpec.from_callable(generate)
    assert spec.name.endswith("generate")
    assert spec.accepted_kwargs == {"image", "max_tokens"}
    assert dict(spec.defaults) == {"image": None, "max_tokens": 256}
    assert dict(spec.positions) == {"model": 0, "prompt": 1, "image": 2}
    other = CallSpec.from_callable(open_ended, bound=True)
    assert other.accepted_kwargs is None
    assert dict(other.positions) == {"max_tokens": 0}
    assert CallSpec.from_callable(len).accepted_kwargs == frozenset()


def test_a_positional_budget_is_replaced_in_place() -> None:
    seen: list[tuple[Any, ...]] = []

    @retry(policy=fast())
    def generate(prompt: str, max_tokens: int = 2048) -> str:
        seen.append((prompt, max_tokens))
        if len(seen) < 3:
            raise MemoryError
        return "ok"

    assert generate("p", 1000) == "ok"
    assert seen == [("p", 1000), ("p", 512), ("p", 256)]


def test_the_policy_ladder_wins_and_none_means_the_targets_own() -> None:
    from mlx_vlm_safe._retry._ladder import ladder_for

    own = CallSpec("f", ladder=({"budget": 8},))
    assert ladder_for(None, own) == ({"budget": 8},)
    assert ladder_for((), own) == ()  # the policy says: no ladder
    assert ladder_for(({"budget": 4},), own) == ({"budget": 4},)
    assert ladder_for(None, CallSpec("f")) == ()  # the engine has none of its own
