"""What the patch costs per token, against a token rate of 2,000 tokens/s.

Run with a venv that has mlx-vlm and mlx (``PYTHONPATH`` pointing at this
checkout if the package is not installed)::

    python benchmarks/bench_per_token.py [--tokens 2000] [--rounds 15]

The code of the release's own ``stream_generate`` is swapped for a stub that
yields ``TOKENS`` ready-made results (no model work), so the unpatched and
the patched ``generate()`` differ only by our layers on the stream: the
observer, the memory guard's watch (one budget read every 32 tokens), the
deadline check, the thread-exit check. Best of interleaved rounds, patched
minus unpatched, divided by the tokens: the per-token cost, with every
default on. The floor: 1 % of a token at 2,000 tokens/s (5 us), the rate of
a fast backend on the tiny model (about 1,600 tokens/s was measured on an
H200). A report, not a test: the exit code is 0 either way.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import mlx_vlm

import mlx_vlm_safe
from mlx_vlm_safe._patch import locate

RATE = 2000.0  # tokens/s
FLOOR_SHARE = 0.01

#: Resolved in the release module's globals once the stub's code is swapped in.
GenerationResult: Any = None
TOKENS = 2000  # read by the stub through its defaults


def _items(*args: Any, count: int = TOKENS, **kwargs: Any) -> Iterator[Any]:
    """Stub stream: ``count`` results (its code runs in the release's globals)."""
    item = GenerationResult(text="x", token=1, generation_tokens=1)
    for _ in range(count):
        yield item


@contextmanager
def stub_stream(tokens: int) -> Iterator[None]:
    """Swap the code of the release's ``stream_generate`` for ``_items``."""
    function = locate(mlx_vlm).stream_generate
    if function is None or "GenerationResult" not in function.__globals__:
        raise SystemExit("this release has no stream_generate/GenerationResult")
    saved = function.__code__, function.__kwdefaults__
    function.__code__ = _items.__code__
    function.__kwdefaults__ = {"count": tokens}
    try:
        yield
    finally:
        function.__code__, function.__kwdefaults__ = saved


def main() -> None:
    """Measure and print the per-token figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=TOKENS)
    parser.add_argument("--rounds", type=int, default=15)
    options = parser.parse_args()
    from mlx_vlm_safe.testing import build_tiny_checkpoint, tiny_prompt

    model, processor = mlx_vlm.load(str(build_tiny_checkpoint()))
    prompt = tiny_prompt(processor, model.config, "Describe the picture.")
    best = {True: float("inf"), False: float("inf")}
    with stub_stream(options.tokens):
        for i in range(options.rounds):
            for patched in (True, False) if i % 2 == 0 else (False, True):
                if patched:
                    mlx_vlm_safe.patch()
                else:
                    mlx_vlm_safe.unpatch()
                generate = mlx_vlm.generate

                def call(generate: Any = generate, tokens: int = options.tokens) -> Any:
                    return generate(model, processor, prompt, max_tokens=tokens)

                call()
                seconds = min(timeit.Timer(call).repeat(3, 1))
                best[patched] = min(best[patched], seconds)
    mlx_vlm_safe.patch()
    per_token = (best[True] - best[False]) / options.tokens * 1e6
    floor = FLOOR_SHARE * 1e6 / RATE
    verdict = "ok" if per_token <= floor else "MISS"
    print(
        f"per token, patched minus unpatched, {options.tokens} stub tokens, best "
        f"of {options.rounds} rounds: {per_token:.3f} us (floor {floor:.1f} us = "
        f"1 % of a token at {RATE:.0f} tokens/s) {verdict}"
    )
    print(
        f"  unpatched {best[False] / options.tokens * 1e6:.3f} us/token, "
        f"patched {best[True] / options.tokens * 1e6:.3f} us/token; "
        f"{100 * per_token / (1e6 / RATE):.3f} % of a token at {RATE:.0f} tokens/s"
    )


if __name__ == "__main__":
    main()
