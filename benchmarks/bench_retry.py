"""What ``@mlx_vlm_safe`` retry costs a call, next to tenacity and stamina.

Run with the venv that has tenacity and stamina installed (they are not
dependencies of the library, only of this script)::

    python benchmarks/bench_retry.py

Everything comes from one run, so the ratios compare like with like; absolute
nanoseconds on a shared machine are noisy, ratios much less so.

* Happy path: a trivial function, bare and under each decorator. Candidates
  run in interleaved rounds and each keeps its best round (noise only ever
  adds time). Overhead is the per-call time minus the bare function's.
* Bad argument: a function that raises ``ValueError`` at once, bare and under
  ``@retry``; the ratio is the median over many interleaved runs. A second row
  adds 100 us of input preparation before the error, for scale: mlx-vlm's own
  argument errors come after templating and tokenising the prompt.
"""

from __future__ import annotations

import importlib.metadata
import platform
import statistics
import sys
import timeit
from collections.abc import Callable
from time import perf_counter
from typing import Any

from mlx_vlm_safe import is_testing, retry

try:  # only for the comparison; not dependencies of the library
    import stamina
    import tenacity
except ImportError:
    stamina = tenacity = None

ROUNDS = 15
BAD_RUNS = 41
MISSES: list[str] = []


def trivial() -> int:
    """Do nothing, so that only the wrapper is measured."""
    return 1


def bad_argument(prompt: object = None, max_tokens: int = 256) -> None:
    """Reject the arguments at once, like a validation error."""
    raise ValueError("max_tokens must be positive")


def bad_after_preparation(prompt: object = None, max_tokens: int = 256) -> None:
    """Reject the arguments after 100 us of work on the inputs."""
    end = perf_counter() + 100e-6  # stands in for templating and tokenising
    while perf_counter() < end:
        pass
    raise ValueError("max_tokens must be positive")


def verdict(value: float, floor: float, name: str) -> str:
    """Return "ok", or "MISS" and remember the miss."""
    if value <= floor:
        return "ok"
    MISSES.append(name)
    return "MISS"


def per_call_ns(
    candidates: dict[str, tuple[Callable[[], Any], int]],
) -> dict[str, float]:
    """Best round per candidate, rounds interleaved so drift hits all alike."""
    best = dict.fromkeys(candidates, float("inf"))
    for _ in range(ROUNDS):
        for name, (fn, number) in candidates.items():
            seconds = timeit.Timer(fn).timeit(number)
            best[name] = min(best[name], seconds / number * 1e9)
    return best


def time_to_error_ns(fn: Callable[[], None], number: int) -> float:
    """Nanoseconds from call to caught ``ValueError``, averaged over a loop."""

    def loop() -> None:
        for _ in range(number):
            try:  # noqa: SIM105 - contextlib.suppress would dominate the timing
                fn()
            except ValueError:
                pass

    return timeit.Timer(loop).timeit(1) / number * 1e9


def bad_argument_ratio(
    bare: Callable[[], None], number: int
) -> tuple[float, float, float]:
    """Median bare and wrapped time to the error, and the median ratio."""
    calls: list[int] = []

    def counted() -> None:
        calls.append(1)
        bare()

    wrapped = retry(counted)
    ratios, bare_ns, wrapped_ns = [], [], []
    for _ in range(BAD_RUNS):
        b = time_to_error_ns(bare, number)
        calls.clear()
        w = time_to_error_ns(wrapped, number)
        if len(calls) != number:  # a bad argument must be tried once, never again
            raise SystemExit(f"bad argument was retried: {len(calls)} calls")
        bare_ns.append(b)
        wrapped_ns.append(w)
        ratios.append(w / b)
    return (
        statistics.median(bare_ns),
        statistics.median(wrapped_ns),
        statistics.median(ratios),
    )


def main() -> int:
    """Print every figure next to its floor; misses are marked, not hidden."""
    if stamina is None or tenacity is None:
        print("install tenacity and stamina into this venv to run the comparison")
        return 2
    if is_testing():
        print("set_testing() is on: the numbers would not be representative")
        return 2

    versions = ", ".join(
        f"{p} {importlib.metadata.version(p)}"
        for p in ("mlx-vlm-safe", "wrapt", "tenacity", "stamina")
        if _installed(p)
    )
    print(f"retry benchmark: Python {platform.python_version()}, {versions}")
    print(f"one run; happy path best of {ROUNDS} interleaved rounds\n")

    ours = retry(trivial)
    candidates = {
        "bare function": (trivial, 300_000),
        "mlx_vlm_safe @retry": (ours, 300_000),
        "tenacity @retry(stop=stop_after_attempt(3))": (
            tenacity.retry(stop=tenacity.stop_after_attempt(3))(trivial),
            20_000,
        ),
        "stamina @retry(on=Exception, attempts=3)": (
            stamina.retry(on=Exception, attempts=3)(trivial),
            20_000,
        ),
    }
    ns = per_call_ns(candidates)
    bare, mine, ten, sta = ns.values()
    print("happy path, ns per call")
    for name, value in ns.items():
        print(f"  {name:<46} {value:>9.0f}")
    overhead = mine - bare
    vs_ten, vs_sta = overhead / (ten - bare), overhead / (sta - bare)
    print()
    row("overhead of ours over bare (ns)", overhead, "9.0f", 1000, "overhead")
    row("overhead ratio ours/tenacity", vs_ten, "9.3f", 0.1, "vs tenacity")
    row("overhead ratio ours/stamina", vs_sta, "9.3f", 0.1, "vs stamina")
    print(
        f"  (per-call time ratios: ours/tenacity {mine / ten:.3f}, "
        f"ours/stamina {mine / sta:.3f})"
    )

    print(f"\nbad argument -> time to the error, median of {BAD_RUNS} interleaved runs")
    b, w, ratio = bad_argument_ratio(bad_argument, 20_000)
    row("ValueError raised at once (ratio)", ratio, "9.2f", 1.05, "bad arg, at once")
    print(
        f"    bare {b:.0f} ns, wrapped {w:.0f} ns (+{w - b:.0f} ns): one attempt, "
        f"no wait; 5% of a {b:.0f} ns call is less than any wrapper costs"
    )
    b, w, ratio = bad_argument_ratio(bad_after_preparation, 300)
    row(
        "ValueError after 100 us of preparation (ratio)", ratio, "9.3f", 1.05, "bad arg"
    )
    print(f"    bare {b / 1000:.1f} us, wrapped {w / 1000:.1f} us: +{w - b:.0f} ns")

    print(f"\nmisses: {', '.join(MISSES) if MISSES else 'none'}")
    return 0


def row(label: str, value: float, fmt: str, floor: float, name: str) -> None:
    """Print one figure, its floor, and whether it holds."""
    mark = verdict(value, floor, name)
    print(f"  {label:<46} {value:{fmt}}   floor <= {floor:<6g} {mark}")


def _installed(name: str) -> bool:
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
