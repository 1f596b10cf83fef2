"""The generate() wrapper's outcome where no stream reports one.

Releases 0.1.0-0.1.6 drive ``generate_step`` themselves, so no patched stream
ever tells the wrapper how the generation ended; they cannot be installed in
CI (their ``generate`` takes its arguments in another order), so these stand-
ins take their place. The streaming releases are covered by the real-model
suite (tests/patch/test_fixes.py).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from typing import cast

import pytest

from mlx_vlm_safe import Outcome, last_outcome, retries_disabled
from mlx_vlm_safe._patch._behaviour import Behaviour
from mlx_vlm_safe._patch._locate import Located
from mlx_vlm_safe._patch._retry_wiring import runners
from mlx_vlm_safe._patch._wrappers import _observed, wrap_generate

BEHAVIOUR = Behaviour(
    never_empty=False,
    shape="str",
    result_class=None,
    stats=None,
    empty_item="",
    default_max_tokens=100,
)


def _wrapped(text: str | None, *, retry: bool) -> Callable[..., object]:
    def generate(model: object, processor: object, prompt: str) -> str | None:
        return text  # 0.1.0-0.1.6: text straight from generate_step, no stream

    call = None
    if retry:
        located = Located("utils", "x", generate, None, None, None, None, {})
        call = runners(located, BEHAVIOUR)[0]
    return wrap_generate(generate, BEHAVIOUR, call)


@pytest.mark.parametrize("retry", [False, True])
@pytest.mark.parametrize(
    ("text", "result", "outcome"),
    [
        ("some text", "some text", Outcome("stop", 0)),
        ("", "", Outcome("empty", 0)),
        (None, "", Outcome("empty", 0)),  # never None: the release's empty shape
    ],
)
def test_no_stream_is_judged_by_the_text(
    text: str | None, result: str, outcome: Outcome, retry: bool
) -> None:
    list(_observed(iter(["stale"]), 1))  # an earlier generation's outcome
    assert last_outcome() == Outcome("length", 1)
    assert _wrapped(text, retry=retry)(None, None, "p") == result
    assert last_outcome() == outcome


def test_a_stream_closed_early_is_not_a_finished_answer() -> None:
    """Upstream stops iterating and returns: judged by the text, not 'length'."""

    def stream() -> Iterator[str]:
        yield from ("a", "b", "c")

    def generate(model: object, processor: object, prompt: str) -> object:
        items = cast("Generator[object, None, None]", _observed(stream(), 3))
        first = next(items)
        items.close()  # the stream ends INCOMPLETE
        return first

    with retries_disabled():
        assert wrap_generate(generate, BEHAVIOUR)(None, None, "p") == "a"
        assert last_outcome() == Outcome("stop", 0)
