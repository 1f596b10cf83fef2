"""What the patch costs: generation speed, per call, at import, and to apply.

Run with a venv that has mlx-vlm and mlx (``PYTHONPATH`` pointing at this
checkout if the package is not installed)::

    python benchmarks/bench_overhead.py
    python benchmarks/bench_overhead.py --write   # and into docs/costs.md

A report, not a test: every figure comes from one run and is printed next to
its floor; a miss is marked ``MISS`` and listed at the end, and the exit code
is 0 either way. Ratios and best-of figures are used because absolute times
on a shared machine are noisy (noise only ever adds time):

1. End-to-end tokens/s of ``generate()`` on the tiny checkpoint, 128 tokens,
   patched / unpatched: the median of per-pair ratios over interleaved pairs
   (the order alternates within pairs, so drift hits both alike).
   1b. The same with the memory guard on / off (both patched); alone with
   ``--memory-guard``.
2. Per-call overhead of the patched ``generate()`` around a stub stream (no
   model): the code of the release's own ``stream_generate`` is swapped for
   one that yields a single result, so the unpatched and the patched
   ``generate()`` do the same work and differ only by our layers; best of
   interleaved rounds, patched minus unpatched (memory guard off).
   2b. The memory guard's pre-flight per call, the same way (guard on minus
   off), against 1 % of a real 128-token call.
3. ``import mlx_vlm_safe`` in a fresh interpreter with mlx-vlm installed but
   not imported: the cumulative ``-X importtime`` figure (median), the wall
   time against a bare interpreter (median of paired runs), and whether mlx
   or mlx_vlm got imported.
4. Applying the patch after ``import mlx_vlm`` and ``import mlx_vlm.server``
   (probes, wrappers, rebinding every copy in every loaded ``mlx_vlm*``
   module): ``unpatch(); t = perf_counter(); patch()``, median of repeats.
   The first application in a fresh process (which also imports wrapt and
   packaging) is printed as information.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import io
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

import mlx_vlm
import mlx_vlm.server

import mlx_vlm_safe
from mlx_vlm_safe._patch import locate
from mlx_vlm_safe.testing import build_tiny_checkpoint, tiny_image_path, tiny_prompt

REPO = Path(__file__).resolve().parents[1]
MISSES: list[str] = []
#: ``--write`` puts the report here, between ``<!-- bench-overhead: VERSION -->``
#: and ``<!-- /bench-overhead -->`` for the installed mlx-vlm's version, so the
#: figures the docs print are this script's output, not a paste.
COSTS_PAGE = REPO / "docs" / "costs.md"

#: Resolved in the release module's globals once the stub's code is swapped in
#: (see ``stub_stream``); defined here only so the name exists for linters.
GenerationResult: Any = None


@dataclass(frozen=True)
class Tiny:
    """The loaded tiny model and what a call needs."""

    model: Any
    processor: Any
    prompt: str
    image: list[str]

    def generate(self, max_tokens: int) -> Any:
        """Call whatever ``mlx_vlm.generate`` is now (patched or not)."""
        return mlx_vlm.generate(
            self.model,
            self.processor,
            self.prompt,
            image=self.image,
            max_tokens=max_tokens,
            verbose=False,
        )


def row(label: str, value: float, unit: str, floor: str, ok: bool) -> None:
    """Print one figure next to its floor; remember a miss."""
    mark = "ok" if ok else "MISS"
    if not ok:
        MISSES.append(label)
    print(f"  {label:<52} {value:>9.3f} {unit:<5} floor {floor:<10} {mark}")


def set_patched(patched: bool) -> None:
    """Patch or unpatch; the state is checked, never assumed."""
    if patched:
        mlx_vlm_safe.patch()
    else:
        mlx_vlm_safe.unpatch()
    if mlx_vlm_safe.is_patched() is not patched:
        raise SystemExit(f"could not switch to patched={patched}")


# --------------------------------------------------------------- 1. end to end


def tokens_per_second(tiny: Tiny, tokens: int) -> float:
    """Tokens per wall-clock second of one whole ``generate()`` call."""
    started = perf_counter()
    result = tiny.generate(tokens)
    seconds = perf_counter() - started
    if result.generation_tokens != tokens:
        raise SystemExit(f"expected {tokens} tokens, got {result.generation_tokens}")
    return tokens / seconds


def end_to_end(tiny: Tiny, pairs: int, tokens: int) -> None:
    """Median patched/unpatched ratio over interleaved pairs."""
    for patched in (True, False):  # warm both paths
        set_patched(patched)
        tokens_per_second(tiny, tokens)
    ratios, on, off = [], [], []
    for i in range(pairs):
        speeds = {}
        for patched in (True, False) if i % 2 == 0 else (False, True):
            set_patched(patched)
            gc.collect()
            speeds[patched] = tokens_per_second(tiny, tokens)
        on.append(speeds[True])
        off.append(speeds[False])
        ratios.append(speeds[True] / speeds[False])
    ratio = statistics.median(ratios)
    print(f"1. end to end, {tokens} tokens, median of {pairs} interleaved pairs")
    row(
        "generate() tokens/s, patched / unpatched", ratio, "x", ">= 0.99", ratio >= 0.99
    )
    print(
        f"     patched {statistics.median(on):.0f} tok/s, unpatched "
        f"{statistics.median(off):.0f} tok/s (medians); pair ratios "
        f"{min(ratios):.3f}-{max(ratios):.3f}; best run patched / best run "
        f"unpatched {max(on) / max(off):.3f} (load only ever slows a run down)"
    )


def memory_guard(tiny: Tiny, pairs: int, tokens: int) -> None:
    """Median guard-on / guard-off ratio of patched tokens/s, interleaved pairs.

    Both sides are patched; "off" is ``configure(memory_limit="off")``, so the
    ratio is the guard alone: the pre-flight budget and estimate, and the
    in-flight check every ``CHECK_EVERY`` tokens.
    """
    set_patched(True)

    def guard(on: bool) -> None:
        mlx_vlm_safe.configure(memory_limit=None if on else "off")

    for on in (True, False):  # warm both paths
        guard(on)
        tokens_per_second(tiny, tokens)
    ratios, with_guard, without = [], [], []
    for i in range(pairs):
        speeds = {}
        for on in (True, False) if i % 2 == 0 else (False, True):
            guard(on)
            gc.collect()
            speeds[on] = tokens_per_second(tiny, tokens)
        with_guard.append(speeds[True])
        without.append(speeds[False])
        ratios.append(speeds[True] / speeds[False])
    guard(True)
    ratio = statistics.median(ratios)
    print(f"1b. memory guard, {tokens} tokens, median of {pairs} interleaved pairs")
    row(
        "generate() tokens/s, guard on / guard off",
        ratio,
        "x",
        ">= 0.99",
        ratio >= 0.99,
    )
    print(
        f"     guard on {statistics.median(with_guard):.0f} tok/s, off "
        f"{statistics.median(without):.0f} tok/s (medians); pair ratios "
        f"{min(ratios):.3f}-{max(ratios):.3f}"
    )


# --------------------------------------------------------------- 2. per call


def _one_item(*args: Any, **kwargs: Any) -> Iterator[Any]:
    """Stub stream: one result and done (its code runs in the release's globals)."""
    yield GenerationResult(text="x", token=1, generation_tokens=1)


@contextmanager
def stub_stream() -> Iterator[None]:
    """Swap the code of the release's own ``stream_generate`` for ``_one_item``.

    The function object keeps its identity, so the patched wrapper (which
    holds it) and the unpatched ``generate()`` (which looks it up) both call
    the stub; the same trick as ``mlx_vlm_safe.testing.empty_stream()``.
    """
    function = locate(mlx_vlm).stream_generate
    if function is None or "GenerationResult" not in function.__globals__:
        raise SystemExit("this release has no stream_generate/GenerationResult")
    saved = function.__code__
    function.__code__ = _one_item.__code__
    try:
        yield
    finally:
        function.__code__ = saved


def per_call(tiny: Tiny, rounds: int, number: int) -> None:
    """Best-of-rounds per call, patched minus unpatched, in microseconds.

    The memory guard is off here (its cost is figure 2b): this figure is the
    wrappers' own.
    """
    best = {True: float("inf"), False: float("inf")}
    mlx_vlm_safe.configure(memory_limit="off")
    with stub_stream():
        for i in range(rounds):
            for patched in (True, False) if i % 2 == 0 else (False, True):
                set_patched(patched)
                call = _caller(tiny)
                call()  # the result must come back through every layer
                seconds = timeit.Timer(call).timeit(number)
                best[patched] = min(best[patched], seconds / number * 1e6)
    mlx_vlm_safe.configure(memory_limit=None)
    overhead = best[True] - best[False]
    print(f"\n2. per call around a stub stream, best of {rounds} rounds x {number}")
    row("patched generate() overhead", overhead, "us", "<= 1.5", overhead <= 1.5)
    print(f"     unpatched {best[False]:.2f} us/call, patched {best[True]:.2f} us/call")


def guard_per_call(tiny: Tiny, rounds: int, number: int) -> None:
    """The memory guard's pre-flight per call (patched, guard on minus off).

    Around the stub stream, so it is the budget read, the model's figures
    (cached) and counting the prompt's tokens; the floor is 1 % of one real
    128-token ``generate()`` on the tiny checkpoint (best of 5), the smallest
    real call the end-to-end figure measures.
    """
    set_patched(True)
    real = min(1e6 / tokens_per_second(tiny, 128) * 128 for _ in range(5))
    best = {True: float("inf"), False: float("inf")}
    with stub_stream():
        for i in range(rounds):
            for on in (True, False) if i % 2 == 0 else (False, True):
                mlx_vlm_safe.configure(memory_limit=None if on else "off")
                call = _caller(tiny)
                call()
                seconds = timeit.Timer(call).timeit(number)
                best[on] = min(best[on], seconds / number * 1e6)
    mlx_vlm_safe.configure(memory_limit=None)
    cost = best[True] - best[False]
    floor = real / 100
    print(f"\n2b. memory guard per call, best of {rounds} rounds x {number}")
    row(
        "pre-flight check per generate() call",
        cost,
        "us",
        f"<= {floor:.0f}",
        cost <= floor,
    )
    print(
        f"     {100 * cost / real:.3f} % of a real 128-token call "
        f"({real / 1e3:.1f} ms); plus one budget read every 32 tokens in flight"
    )


def _caller(tiny: Tiny) -> Callable[[], Any]:
    generate = mlx_vlm.generate  # bound now: the state under test
    model, processor, prompt = tiny.model, tiny.processor, tiny.prompt
    return lambda: generate(model, processor, prompt, max_tokens=8)


# --------------------------------------------------------------- 3. import


def _python(code: str, *flags: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MLX_VLM_SAFE_DISABLE"}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), env.get("PYTHONPATH", "")) if p
    )
    return subprocess.run(
        [sys.executable, *flags, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )


def _wall(code: str) -> float:
    started = perf_counter()
    _python(code)
    return perf_counter() - started


def import_cost(runs: int) -> None:
    """-X importtime cumulative, and wall time against a bare interpreter."""
    cumulative = []
    for _ in range(runs):
        err = _python("import mlx_vlm_safe", "-X", "importtime").stderr
        found = re.search(r"\|\s*(\d+)\s*\|\s*mlx_vlm_safe\s*$", err, re.M)
        if found is None:
            raise SystemExit("no importtime line for mlx_vlm_safe")
        cumulative.append(int(found.group(1)) / 1000)
    extra = []
    codes = ("pass", "import mlx_vlm_safe")
    for i in range(runs):
        walls = {code: _wall(code) for code in (codes if i % 2 else codes[::-1])}
        extra.append((walls[codes[1]] - walls[codes[0]]) * 1000)
    heavy = _python(
        "import sys, mlx_vlm_safe\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'mlx', 'mlx_vlm'}))"
    ).stdout.strip()
    importtime, wall = statistics.median(cumulative), statistics.median(extra)
    print(f"\n3. import mlx_vlm_safe in a fresh interpreter, median of {runs}")
    row("-X importtime, cumulative", importtime, "ms", "<= 5", importtime <= 5)
    row("wall time over a bare interpreter", wall, "ms", "<= 5", wall <= 5)
    print(f"     mlx / mlx_vlm imported by it: {heavy}")
    if heavy != "[]":
        MISSES.append("import pulls in mlx or mlx_vlm")


# --------------------------------------------------------------- 4. patch


def apply_cost(repeats: int) -> None:
    """unpatch(); time patch(); with mlx_vlm and its server loaded."""
    seconds = []
    for _ in range(repeats):
        set_patched(False)
        gc.collect()
        started = perf_counter()
        mlx_vlm_safe.patch()
        seconds.append(perf_counter() - started)
    set_patched(True)
    median = statistics.median(seconds) * 1000
    targets = sum(len(fix.targets) for fix in mlx_vlm_safe.report().fixes)
    loaded = sum(1 for name in sys.modules if name.split(".")[0] == "mlx_vlm")
    print(f"\n4. patch() after import mlx_vlm (+ server), median of {repeats}")
    row("apply the patch (probe, wrap, rebind)", median, "ms", "<= 5", median <= 5)
    print(
        f"     best {min(seconds) * 1000:.2f} ms; {targets} attributes rebound "
        f"across {loaded} loaded mlx_vlm modules"
    )
    cold = statistics.median(
        float(
            _python(
                "import mlx_vlm, mlx_vlm.server\n"
                "from time import perf_counter\n"
                "t = perf_counter()\n"
                "import mlx_vlm_safe\n"
                "print((perf_counter() - t) * 1000)"
            ).stdout.split()[-1]
        )
        for _ in range(3)
    )
    print(
        f"     info: first application in a fresh process (import mlx_vlm_safe "
        f"after mlx_vlm, incl. wrapt/packaging imports): {cold:.1f} ms"
    )


# --------------------------------------------------------------- main


def load_tiny() -> Tiny:
    """Build the tiny checkpoint in a temporary directory and load it."""
    root = Path(tempfile.mkdtemp(prefix="bench_overhead_"))
    model, processor = mlx_vlm.load(str(build_tiny_checkpoint(root / "checkpoint")))
    prompt = tiny_prompt(processor, model.config, "Describe the picture.")
    return Tiny(model, processor, prompt, [str(tiny_image_path(root))])


def main() -> int:
    """Run the four benchmarks and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=41, help="end-to-end pairs")
    parser.add_argument("--rounds", type=int, default=15, help="per-call rounds")
    parser.add_argument("--imports", type=int, default=21, help="import runs")
    parser.add_argument(
        "--write",
        action="store_true",
        help="also put the report into docs/costs.md, in this release's block",
    )
    parser.add_argument(
        "--memory-guard",
        action="store_true",
        help="only the memory guard's cost (1b), guard on / off",
    )
    args = parser.parse_args()
    if args.write:
        with _recorded() as report:
            code = _run(args)
        write_report(report.getvalue())
        return code
    return _run(args)


class _Tee(io.StringIO):
    """Prints as it goes and keeps a copy for ``--write``."""

    def __init__(self, out: Any) -> None:
        super().__init__()
        self._out = out

    def write(self, text: str) -> int:
        self._out.write(text)
        return super().write(text)


@contextmanager
def _recorded() -> Iterator[io.StringIO]:
    tee = _Tee(sys.stdout)
    sys.stdout = tee
    try:
        yield tee
    finally:
        sys.stdout = tee._out


def write_report(report: str) -> None:
    """Replace this release's block in docs/costs.md with ``report``."""
    opening = f"<!-- bench-overhead: {mlx_vlm.__version__} -->"
    text = COSTS_PAGE.read_text(encoding="utf-8")
    if opening not in text:
        raise SystemExit(f"{COSTS_PAGE} has no {opening} block to write into")
    start = text.index(opening) + len(opening)
    end = text.index("<!-- /bench-overhead -->", start)
    block = f"\n```text\n{report.strip()}\n```\n"
    COSTS_PAGE.write_text(text[:start] + block + text[end:], encoding="utf-8")
    print(f"written into {COSTS_PAGE.relative_to(REPO)}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    """The benchmarks ``args`` ask for; the report goes to stdout."""
    if mlx_vlm_safe.is_testing():
        print("set_testing() is on: the figures would not be representative")
        return 2
    mlx_vlm_safe.patch()
    mx = importlib.import_module("mlx.core")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"overhead benchmark: mlx-vlm {mlx_vlm.__version__}, mlx {mx.__version__}, "
        f"Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {load:.1f}, "
        f"{time.strftime('%Y-%m-%d')}"
    )
    print("one run; each figure next to its floor\n")
    tiny = load_tiny()
    if args.memory_guard:
        memory_guard(tiny, args.pairs, 128)
        guard_per_call(tiny, args.rounds, 500)
        print(f"\nmisses: {', '.join(MISSES) if MISSES else 'none'}")
        return 0
    end_to_end(tiny, args.pairs, 128)
    memory_guard(tiny, args.pairs, 128)
    per_call(tiny, args.rounds, 5_000)
    guard_per_call(tiny, args.rounds, 500)
    import_cost(args.imports)
    apply_cost(31)
    print(f"\nmisses: {', '.join(MISSES) if MISSES else 'none'}")
    # The load at the start says little about a run of several minutes on a
    # shared machine: the end's is printed too.
    if hasattr(os, "getloadavg"):
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
