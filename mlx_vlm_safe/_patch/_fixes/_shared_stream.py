"""Concurrent generations on a stream that threads share: one step at a time.

Strictly private. Where mlx shares a stream between threads (CPU streams up
to mlx 0.31.x), two threads evaluating on it at once corrupt mlx's state:
12 concurrent generations on mlx-vlm 0.3.5 with mlx 0.29.3, 0.31.1 or 0.31.2
ended in a segmentation fault or a heap-corruption abort within a few rounds,
patched or not. mlx 0.32.0+ binds streams to threads, and the thread fix then
gives each thread its own. Here the patch lets each call's steps (every
``next()`` of the release's stream, where all of its mlx work happens) run
one at a time: concurrent callers interleave token by token, each still gets
its own answer, and a lone caller pays one uncontended lock per token.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator

from . import FixSpec
from ._thread_stream import NAME as THREAD_STREAM
from ._thread_stream import THREADS

#: The verdict of the ``thread_stream`` probe that calls for this fix.
SHARED = "shared_by_threads"
#: One lock for the process: every generation shares the stream, and mlx's
#: state with it. Re-entrant, so a step that starts another never deadlocks.
_STEP = threading.RLock()


def one_step_at_a_time(
    original: Callable[..., Iterator[object]],
) -> Callable[..., Iterator[object]]:
    """``original`` whose every step runs under the process-wide step lock."""

    @functools.wraps(original)  # the memory guard reads its signature
    def stream(*args: object, **kwargs: object) -> Iterator[object]:
        with _STEP:
            steps = iter(original(*args, **kwargs))
        try:
            while True:
                with _STEP:
                    try:
                        item = next(steps)
                    except StopIteration:
                        return
                yield item
        finally:
            close = getattr(steps, "close", None)
            if close is not None:
                with _STEP:
                    close()

    return stream


SERIALIZED_STEPS = FixSpec(
    "serialized_steps",
    "this mlx shares the generation stream between threads and concurrent "
    "evaluation on it crashes the process; concurrent calls now run their "
    "steps one at a time",
    when={THREAD_STREAM: frozenset({SHARED})},
    root_cause=True,
    layer=one_step_at_a_time,
    inner=True,  # it guards mlx's own work only
    # No mlx-vlm release fixes it: mlx 0.32.0+ binds CPU streams to threads.
    doctor=f"{THREADS} one at a time only without the patch: this mlx shares the "
    "generation stream between threads, and concurrent calls crash the process "
    "(segmentation fault); the patch runs their steps one at a time.",
)
