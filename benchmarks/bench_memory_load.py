"""What admission costs when memory is plentiful: 4 concurrent threads.

Run with a venv that has mlx-vlm and mlx (``PYTHONPATH`` pointing at this
checkout if the package is not installed)::

    python benchmarks/bench_memory_load.py [--rounds 6] [--tokens 128]

Four worker threads each run ``generate(max_tokens=TOKENS)`` on the tiny
checkpoint at the same moment; a round's figure is the aggregate tokens/s
(all tokens over the round's wall time). Rounds alternate the memory guard
on (the ledger admits every call: the system's room is plentiful) and off
(``memory_limit="off"``), so drift on a shared machine hits both alike; the
report is the median of the per-pair ratios on / off, against the 0.98 floor.
A report, not a test: the exit code is 0 either way.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

FLOOR = 0.98
WORKERS = 4


def main() -> None:
    """Run the interleaved rounds and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=128)
    options = parser.parse_args()

    import mlx_vlm

    import mlx_vlm_safe
    from mlx_vlm_safe._patch._memory._ledger import ledger
    from mlx_vlm_safe.testing import build_tiny_checkpoint, tiny_image_path, tiny_prompt

    root = tempfile.mkdtemp()
    model, processor = mlx_vlm.load(str(build_tiny_checkpoint(f"{root}/ckpt")))
    prompt = tiny_prompt(processor, model.config, "Describe the picture.")
    image = [str(tiny_image_path(root))]
    tokens = options.tokens

    def one(_: int) -> None:
        mlx_vlm.generate(model, processor, prompt, image=image, max_tokens=tokens)

    pool = ThreadPoolExecutor(WORKERS)
    list(pool.map(one, range(WORKERS)))  # warm every worker up

    def round_(guard: bool) -> float:
        mlx_vlm_safe.configure(memory_limit=None if guard else "off")
        barrier = threading.Barrier(WORKERS)

        def call(i: int) -> None:
            barrier.wait()
            one(i)

        started = time.perf_counter()
        list(pool.map(call, range(WORKERS)))
        return WORKERS * tokens / (time.perf_counter() - started)

    ratios = []
    for pair in range(options.rounds):
        order = (True, False) if pair % 2 == 0 else (False, True)
        speeds = {guard: round_(guard) for guard in order}
        ratios.append(speeds[True] / speeds[False])
        print(
            f"pair {pair + 1}: guard on {speeds[True]:7.0f} tok/s, "
            f"off {speeds[False]:7.0f} tok/s, ratio {ratios[-1]:.3f}"
        )
    median = statistics.median(ratios)
    verdict = "ok" if median >= FLOOR else "MISS"
    print(
        f"aggregate tokens/s of {WORKERS} threads, guard on / off: median "
        f"{median:.3f} over {len(ratios)} pairs (floor {FLOOR}) {verdict}"
    )
    print(f"ledger: {ledger.snapshot()}")
    pool.shutdown()


if __name__ == "__main__":
    main()
