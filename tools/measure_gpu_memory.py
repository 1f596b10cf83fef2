"""Measure the memory guard where mlx runs on a CUDA GPU (docs/memory.md).

Why: the guard's device budget (``gpu_free`` / ``mlx_limit``) and its CUDA
allowance were built from one set of H200 figures; CI has no GPU. Run this on
a machine with mlx-cuda and the wide test checkpoint; it prints, as JSON
lines:

* ``budget``: the budget and every source, with nothing held;
* ``peak``: the estimate against mlx's measured peak for 8 to 1000 tokens
  on the wide checkpoint (is the allowance, ``with_allowance``, enough?);
* ``held``: with most of the GPU's free memory held in mlx arrays, the
  budget follows it, and a call that does not fit is refused before it
  allocates one byte, while a call that fits is served whole.

It never asks mlx for more than the device has free less ``--spare`` GiB:
never drive mlx-cuda out of GPU memory (the recorded out-of-memory errors
are in ``tests/patch/test_retry_rules.py``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from typing import Any


def _line(kind: str, **fields: object) -> None:
    print(json.dumps({"kind": kind, **fields}), flush=True)


def _peaks(mx: Any, call: Callable[[int], Any], estimate: Callable[[int], int]) -> None:
    """Estimate vs mlx's measured peak growth, after a warm-up call."""
    import mlx_vlm_safe

    call(8)  # warm: kernels compiled, first-use buffers made
    for tokens in (8, 100, 240, 1000):
        mx.clear_cache()
        mx.reset_peak_memory()
        base = mx.get_active_memory()
        call(tokens)
        peak = mx.get_peak_memory() - base
        outcome = mlx_vlm_safe.last_outcome()
        served = outcome.generation_tokens if outcome else tokens
        total = estimate(served)
        _line("peak", tokens=served, estimate=total, peak=peak, over=peak - total)


def _held(mx: Any, call: Callable[[int], Any], spare: float, sizes: list[int]) -> None:
    """With all but ``spare`` GiB of the GPU held: what the budget and calls do."""
    import mlx_vlm_safe
    from mlx_vlm_safe._patch._memory import _budget

    free = int(mx.device_info().get("free_memory", 0))
    hold = max(free - int(spare * 2**30), 0)
    # In 4 GiB arrays: one 35 GB array failed on the H200 (a kernel launch
    # over more elements than CUDA's grid takes: cudaGraphAddKernelNode).
    chunk = 4 * 2**30
    held = [mx.zeros((min(chunk, hold - at) // 4,)) for at in range(0, hold, chunk)]
    mx.eval(held)
    budget = _budget.read_budget()
    _line("held", gib=round(hold / 2**30, 1), summary=_budget.describe(budget))
    for tokens in sizes:
        mx.reset_peak_memory()
        base = mx.get_active_memory()
        try:
            call(tokens)
        except MemoryError as exc:
            grown = mx.get_peak_memory() - base
            _line("held-call", max_tokens=tokens, error=str(exc)[:300], grown=grown)
        else:
            outcome = mlx_vlm_safe.last_outcome()
            _line(
                "held-call",
                max_tokens=tokens,
                served=outcome.generation_tokens if outcome else None,
                shortened=bool(outcome and outcome.shortened),
            )
    del held
    mx.clear_cache()


def main() -> None:
    """Print the measurements as JSON lines (see the module)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spare", type=float, default=6.0, help="GiB left free")
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--too-many", type=int, default=400_000)
    args = parser.parse_args()

    import mlx.core as mx
    import mlx_vlm

    from mlx_vlm_safe._patch._memory import _budget, _estimate
    from mlx_vlm_safe._patch._memory._device_room import device_room, with_allowance
    from mlx_vlm_safe.testing import (
        build_tiny_checkpoint,
        tiny_image_path,
        tiny_prompt,
    )
    from tests.conftest import WIDE

    _line("device", device=str(mx.default_device()), info=str(mx.device_info()))
    path = build_tiny_checkpoint(tempfile.mkdtemp(), text_config=WIDE)
    model, processor = mlx_vlm.load(str(path))
    prompt = tiny_prompt(processor, model.config, "Describe the picture.")
    image = [str(tiny_image_path())]
    arch = _estimate.architecture(model)

    def call(tokens: int) -> Any:
        return mlx_vlm.generate(
            model, processor, prompt, image=image, max_tokens=tokens, verbose=False
        )

    def estimate(tokens: int) -> int:
        found = _estimate.estimate(
            arch,
            processor=processor,
            prompt=prompt,
            image=image,
            kwargs={},
            max_tokens=tokens,
        )
        return found.total if isinstance(found, _estimate.Estimate) else -1

    _line(
        "budget", summary=_budget.describe(_budget.read_budget()), rooms=device_room()
    )
    _line("allowance", estimate=10**6, reserved=with_allowance(10**6))
    _peaks(mx, call, estimate)
    _held(mx, call, args.spare, [args.tokens, args.too_many])
    _line("after", summary=_budget.describe(_budget.read_budget()))


if __name__ == "__main__":
    main()
