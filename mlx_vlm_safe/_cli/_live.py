"""``doctor --live``: one real generation on the built-in tiny checkpoint.

Strictly private. Twice: on this thread, then on a worker thread (where web
servers and thread pools call ``generate()``), which must give the same greedy
answer.
"""

from __future__ import annotations

import sys
import threading
import time
from types import ModuleType
from typing import Any

from .._log import describe
from .._patch import arm_thread_exit, last_outcome, text_of
from ._diagnosis import LIVE_TOKENS, Live


def _on_worker_thread(call: Any) -> tuple[object, BaseException | None]:
    """Run ``call`` on a new thread, as a web handler or a pool would."""
    box: list[object] = [None, None]

    def work() -> None:
        arm_thread_exit()  # free the thread's streams at its end, patched or not
        try:
            box[0] = call()
        except Exception as exc:
            box[1] = exc

    worker = threading.Thread(target=work, name="mlx-vlm-safe-doctor")
    worker.start()
    worker.join()
    error = box[1]
    return box[0], error if isinstance(error, BaseException) else None


def live_generation(mlx_vlm: ModuleType, home: str | None) -> Live:
    """Generate ``LIVE_TOKENS`` tokens on the tiny checkpoint, for real.

    Twice: on this thread, then on a worker thread (where web servers and
    thread pools call ``generate()``), which must give the same greedy answer.
    """
    from ..testing import (
        build_tiny_checkpoint,
        default_cache_dir,
        tiny_image_path,
        tiny_prompt,
    )

    generate = getattr(mlx_vlm, "generate", None)
    if not callable(generate) and home in sys.modules:  # 0.1.x: the CLI module
        generate = getattr(sys.modules[home], "generate", None)
    start = time.perf_counter()
    cache = str(default_cache_dir())
    try:
        # Its own step: a folder that cannot be written (a read-only HOME in a
        # container) is an OSError here, and says nothing about mlx.
        checkpoint, image = build_tiny_checkpoint(), tiny_image_path()
    except OSError as exc:
        return Live(
            ok=False,
            seconds=time.perf_counter() - start,
            error=describe(exc),
            cache=cache,
            cache_unusable=True,
        )
    try:
        model, processor = mlx_vlm.load(str(checkpoint))
        prompt = tiny_prompt(processor, model.config, "Describe the picture.")

        def call() -> object:
            return generate(  # type: ignore[misc]
                model,
                processor,
                prompt,
                image=[str(image)],
                max_tokens=LIVE_TOKENS,
                verbose=False,
                temperature=0.0,
            )

        result = call()
    except Exception as exc:
        seconds = time.perf_counter() - start
        return Live(ok=False, seconds=seconds, error=describe(exc), cache=cache)
    seconds = time.perf_counter() - start
    text = str(text_of(result))
    tokens = getattr(result, "generation_tokens", None)
    outcome = last_outcome()
    if not isinstance(tokens, int):  # str and tuple results carry no count
        tokens = outcome.generation_tokens if outcome else None
    other, error = _on_worker_thread(call)
    same = error is None and str(text_of(other)) == text
    failure: str | None = None
    if error is not None:
        failure = f"on a worker thread: {describe(error)}"
    elif not same:
        failure = "on a worker thread: a different answer"
    return Live(
        ok=same,
        tokens=tokens,
        text=text,
        finish_reason=outcome.finish_reason if outcome else None,
        seconds=round(seconds, 3),
        error=failure,
        worker_thread_same=same,
        cache=cache,
    )
