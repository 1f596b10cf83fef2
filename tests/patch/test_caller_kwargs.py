"""pass_caller_kwargs: 0.1.7-0.1.9 drop every keyword before generate_step.

The probe on fakes and on the installed release; the repair on the real
release and tiny checkpoint where the table calls for it (the contract test
checks it is left out elsewhere, and runs :func:`check_max_tokens_is_honoured`
switched off and on).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

import mlx_vlm_safe
from mlx_vlm_safe._patch._fixes import _caller_kwargs as fix
from tools.matrix import Expected

from ..conftest import Tiny, counting_tokens

FIX = fix.PASS_CALLER_KWARGS.name


# --- the probe, on fakes ---------------------------------------------------------


def _dropping(
    model: Any, processor: Any, prompt: str, image: Any = None, **kwargs: Any
):  # type: ignore[no-untyped-def]
    kwargs = {}
    yield from generate_step(None, model, None, None, **kwargs)


def _passing(model: Any, processor: Any, prompt: str, image: Any = None, **kwargs: Any):  # type: ignore[no-untyped-def]
    yield from generate_step(None, model, None, None, **kwargs)


def _failing_early(model: Any, processor: Any, prompt: str, **kwargs: Any):  # type: ignore[no-untyped-def]
    kwargs = dict(processor.no_such_attribute)
    yield from generate_step(None, model, None, None, **kwargs)


def _failing_but_passing(model: Any, processor: Any, prompt: str, **kwargs: Any):  # type: ignore[no-untyped-def]
    processor.no_such_attribute  # noqa: B018
    yield from generate_step(None, model, None, None, **kwargs)


def generate_step(*args: Any, **kwargs: Any) -> Iterator[Any]:
    yield from ()


@pytest.mark.parametrize(
    ("stream", "verdict"),
    [
        (_dropping, "dropped"),
        (_passing, "passed"),
        (_failing_early, "inconclusive"),  # it rebinds kwargs: cannot tell
        (_failing_but_passing, "passed"),  # read from its code
        (None, "absent"),
    ],
)
def test_probe_verdicts_on_fakes(stream: Any, verdict: str) -> None:
    assert fix.probe_stream_kwargs(stream).outcome == verdict
    assert generate_step is globals()["generate_step"]  # the clone's, not ours


def test_the_probe_finds_what_the_table_says(release: Expected) -> None:
    assert mlx_vlm_safe.report().probe(fix.NAME) == release.verdicts[fix.NAME]


# --- the repair, on fakes: what 0.1.10 passes ---------------------------------------


def test_the_merge_is_0_1_10s_and_happens_once_per_call() -> None:
    seen: list[dict[str, Any]] = []

    def step(*args: Any, **kwargs: Any) -> Iterator[int]:
        seen.append(kwargs)
        yield 1

    merged = fix.merging(step)

    def stream(
        model: Any, processor: Any, prompt: str, image: Any = None, **kwargs: Any
    ) -> Iterator[int]:
        kwargs = {"image_sizes": "data"}  # what 0.1.7 passes with an image
        yield from merged(None, model, None, None, **kwargs)
        yield from merged(None, model, None, None)  # a second step: untouched

    held = fix.holding_keywords(stream)
    items = list(
        held(
            1,
            2,
            "p",
            image="x.png",
            max_tokens=3,
            image_sizes="mine",
            resize_shape=(8, 8),
        )
    )
    assert items == [1, 1]
    # the caller's, less resize_shape (and image, a parameter), data winning
    assert seen == [{"max_tokens": 3, "image_sizes": "data"}, {}]
    assert list(merged(None, None, None, None, temp=0.5)) == [1]  # outside: as is
    assert seen[-1] == {"temp": 0.5}


# --- the repair, on the real release ---------------------------------------------


@pytest.fixture
def applied(release: Expected, bound: bool) -> None:
    if FIX not in release.fixes_on(bound):
        pytest.skip(f"{FIX} is not called for here (the contract test checks that)")


def check_max_tokens_is_honoured(tiny: Tiny, mlx_vlm: Any) -> None:
    """``pass_caller_kwargs``' symptom: ``max_tokens`` reaches the model."""
    with counting_tokens() as seen:
        tiny.call(mlx_vlm.generate, max_tokens=5)
    assert seen.tokens == 5, f"max_tokens=5 made {seen.tokens} tokens"


def test_generate_honours_max_tokens(applied: None, tiny: Tiny, mlx_vlm: Any) -> None:
    check_max_tokens_is_honoured(tiny, mlx_vlm)


def test_unpatched_the_release_drops_it(
    applied: None, tiny: Tiny, mlx_vlm: Any, unpatched: None
) -> None:
    with pytest.raises(AssertionError, match="max_tokens=5 made 256 tokens"):
        check_max_tokens_is_honoured(tiny, mlx_vlm)


def test_sampling_keywords_reach_generate_step(
    applied: None, tiny: Tiny, exports: Any
) -> None:
    """``logit_bias`` forces one token; an int penalty is 0.1.10's ValueError."""
    items = list(
        tiny.stream(exports.stream_generate, max_tokens=4, logit_bias={7: 1e9})
    )
    assert {item.token for item in items} == {7}, items
    with pytest.raises(ValueError, match="repetition_penalty must be a non-negative"):
        list(tiny.stream(exports.stream_generate, repetition_penalty=1))


def test_concurrent_calls_each_get_their_own_keywords(
    applied: None, tiny: Tiny, exports: Any
) -> None:
    def count(max_tokens: int) -> int:
        return len(list(tiny.stream(exports.stream_generate, max_tokens=max_tokens)))

    alone = {n: count(n) for n in (3, 9)}
    assert alone[3] < alone[9]
    barrier = threading.Barrier(4)
    got: dict[int, list[int]] = {3: [], 9: []}

    def work(n: int) -> None:
        barrier.wait()
        got[n].append(count(n))

    threads = [threading.Thread(target=work, args=(n,)) for n in (3, 9, 3, 9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert got == {3: [alone[3]] * 2, 9: [alone[9]] * 2}
