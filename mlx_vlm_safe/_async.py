"""``agenerate()`` and ``astream_generate()``: the async face of the patched calls.

Strictly private; the package re-exports both. mlx-vlm's generation is
synchronous and holds its thread for the whole answer, so an async app must
run it in a worker thread; what asyncio cannot do alone is *stop* that
thread's work when the awaiting task is cancelled (a client that disconnects
in Starlette, ``asyncio.wait_for``, ``asyncio.timeout``, a task group): the
thread keeps generating, and holding memory, until the answer is complete.

Here each call runs in the loop's default executor under a cancel handle
(``_patch.Canceller``) carried by a copied context, so the patched call
registers itself on it when it starts; when the awaiting task is cancelled,
the handle stops the call at its next token. The caller's ``deadline()``
block, in the copied context, limits the worker's call too.

asyncio is imported on first use, not with the package.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import AsyncIterator
from typing import Any

from ._patch import SCOPE, Canceller, Scope, release_function

__all__ = ["agenerate", "astream_generate"]


def _context(canceller: Canceller) -> contextvars.Context:
    """A copy of the caller's context whose calls answer to ``canceller``.

    The deadline in force is kept: the enclosing ``deadline()`` block's, or
    (no block) the configured timeout, which the call reads when it starts.
    """
    outer = SCOPE.get()
    if outer is None:
        scope = Scope(None, None, sets_deadline=False, canceller=canceller)
    else:
        scope = Scope(
            outer.seconds, outer.at, sets_deadline=outer.sets_deadline,
            canceller=canceller,
        )  # fmt: skip
    context = contextvars.copy_context()
    context.run(SCOPE.set, scope)
    return context


async def agenerate(*args: Any, **kwargs: Any) -> Any:
    """``generate(*args, **kwargs)`` in a worker thread; cancellable.

    Takes exactly what the installed release's ``generate()`` takes and
    returns what the patched one returns. If the awaiting task is cancelled,
    the generation stops at its next token (its thread then raises
    ``GenerationCancelled``, which nobody sees) and this raises
    ``asyncio.CancelledError`` at once, as asyncio expects. ``TimeoutError``
    from a ``deadline()`` or the configured ``timeout`` reaches the caller.
    """
    import asyncio

    generate = release_function("generate")
    canceller = Canceller()
    context = _context(canceller)
    loop = asyncio.get_running_loop()
    work = functools.partial(context.run, generate, *args, **kwargs)
    try:
        return await loop.run_in_executor(None, work)
    except asyncio.CancelledError:
        canceller.cancel()
        raise


async def astream_generate(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
    """``stream_generate(*args, **kwargs)`` item by item, from worker threads.

    Each item is made in the loop's default executor (the patch lets every
    ``next()`` run on another thread). Leaving the loop early stops the
    generation at its next token: cancelling the consuming task, ``aclose()``
    (use ``contextlib.aclosing`` around an ``async for`` that may ``break``;
    otherwise the generator is closed when it is garbage collected), or an
    error in the consumer. Starlette's ``StreamingResponse`` closes it when
    the client disconnects.
    """
    import asyncio

    stream_generate = release_function("stream_generate")
    canceller = Canceller()
    context = _context(canceller)
    loop = asyncio.get_running_loop()
    done: Any = object()
    stream: Any = None
    finished = False
    try:
        start = functools.partial(context.run, stream_generate, *args, **kwargs)
        stream = await loop.run_in_executor(None, start)
        while True:
            item = await loop.run_in_executor(None, next, stream, done)
            if item is done:
                finished = True
                return
            yield item
    finally:
        if not finished:
            # Cancelled while an item was being made: that thread stops at
            # the next token. Between items: close the idle stream, on a
            # worker thread (its clean-up may touch mlx), without waiting.
            canceller.cancel()
            if stream is not None:
                with contextlib.suppress(RuntimeError):  # loop closing: GC does
                    loop.run_in_executor(None, _close, stream)


def _close(stream: Any) -> None:
    """Close a stream; one still running in another thread ends by itself."""
    close = getattr(stream, "close", None)
    if close is None:
        return
    try:
        close()
    except ValueError:  # "generator already executing": cancelled, it stops
        return
