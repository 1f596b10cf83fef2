"""The mix of real calls every telemetry test replays, and what each must record.

Five real calls on the tiny checkpoint, each with what it must produce,
written down from the scenario (not read back from the library):

* ``whole``: ``generate(max_tokens=8)``, the full answer;
* ``bad_argument``: ``temperature="0.7"`` as JSON sends it (a missing image
  where the release drops sampling arguments), which fails at once;
* ``memory_error``: a ``MemoryError`` on every attempt: the ladder
  (``max_tokens`` 4) is tried twice (3 attempts), then the error reaches
  the caller;
* ``shortened``: one ``MemoryError``, then the ladder step succeeds with a
  shorter answer than the 8 tokens asked for;
* ``stream_closed``: ``stream_generate`` closed after its first item.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

import mlx_vlm_safe
from mlx_vlm_safe.testing import plant_fault
from tools.matrix import Expected

from ..conftest import Tiny, temperature_keyword

LADDER = ({"max_tokens": 4},)


@dataclasses.dataclass(frozen=True)
class Expect:
    """What one call of the scenario must record."""

    name: str
    function: str
    outcome: str
    error_type: str | None
    attempts: int
    output_tokens: int | None
    finish_reason: str | None
    shortened: bool
    requested: int = 8
    #: ``max_tokens`` of the last attempt: the ladder's where it stepped in.
    served: int = 8


def run(tiny: Tiny, mlx_vlm: Any, exports: Any, release: Expected) -> list[Expect]:
    """Make the five calls; return what each must have recorded, in order."""
    mlx_vlm_safe.configure(wait_base=0.0, wait_max=0.0, ladder=LADDER)
    expected: list[Expect] = []
    try:
        tiny.call(mlx_vlm.generate)
        tokens = release.tokens_for(8)
        expected.append(
            Expect("whole", "generate", "ok", None, 1, tokens, "length", False)
        )

        # A str temperature under the release's own name (0.1.x before
        # 0.1.21: ``temp``); where no keyword reaches the model (0.1.7-0.1.9
        # unpatched), a missing image.
        sampled = not release.has("kwargs_dropped")
        bad = (
            {temperature_keyword(mlx_vlm): "0.7"}
            if sampled
            else {"image": ["/nope/missing.png"]}
        )
        with pytest.raises((TypeError, ValueError, OSError)) as info:
            tiny.call(mlx_vlm.generate, **bad)
        error = type(info.value).__name__
        if sampled:
            assert error == "TypeError"
        expected.append(
            Expect(
                "bad_argument",
                "generate",
                "error",
                error,
                1,
                None,
                None,
                False,
            )
        )

        with (
            plant_fault(MemoryError("planted"), after_tokens=0),
            pytest.raises(MemoryError),
        ):
            tiny.call(mlx_vlm.generate)
        expected.append(
            Expect(
                "memory_error",
                "generate",
                "error",
                "MemoryError",
                3,  # the last ladder step is tried again
                None,
                None,
                False,
                served=4,
            )
        )

        with plant_fault(MemoryError("planted"), after_tokens=0, times=1):
            tiny.call(mlx_vlm.generate)
        short = release.tokens_for(4)
        expected.append(
            Expect(
                "shortened",
                "generate",
                "ok",
                None,
                2,
                short,
                "length",
                short == 4,
                served=4,
            )
        )

        stream = tiny.stream(exports.stream_generate)
        next(stream)
        stream.close()  # type: ignore[attr-defined]
        expected.append(
            Expect(
                "stream_closed",
                "stream_generate",
                "cancelled",
                "GeneratorExit",
                1,
                None,
                None,
                False,
            )
        )
    finally:
        mlx_vlm_safe.reset_config()
    return expected
