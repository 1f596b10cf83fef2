"""mlx-vlm's own server generates on its own thread: stop it before the exit.

Strictly private. From 0.5.0 ``mlx_vlm.server`` serves every request through
a ``ResponseGenerator``: one *daemon* thread (``_run``) loads the model and
runs a ``BatchGenerator`` outside ``generate()`` / ``stream_generate()``, so
the wrappers never see it. 0.7.10's lifespan does not stop it on shutdown
(it stops only the audio and realtime workers), so the thread is still alive,
holding mlx's thread-locals, when the interpreter finalises: the process
aborts (``terminate called without an active exception``, SIGABRT, measured
5 of 5 on 0.7.10 after 9 chat completions, patched or not).

What we do, with the release's own handles:

* ``_run`` (a class attribute, looked up when the server builds its
  generator, after the import hook ran) is wrapped to arm its thread for the
  clean exit (``_thread_exit``) and to remember the generator (weakly).
* ``generate()`` returns a token iterator whose ``close()`` cancels its
  request (the release documents it as safe from any thread); we remember
  those (weakly) too. Where a time limit is in force
  (``MLX_VLM_SAFE_TIMEOUT``), the handler gets them through
  :func:`_limited`: past the deadline the request is cancelled and the
  handler sees ``TimeoutError``, as with ``generate()``; so uvicorn's drain
  on the first Ctrl-C or SIGTERM is bounded on these servers too.
* When the main thread ends (``_shutdown``), :func:`stop_servers` closes the
  iterators still open (their requests stop at the thread's next step),
  then calls each live generator's ``stop_and_join()``: the thread ends, and
  the exit waits for its teardown.

What the release does not give: a way to stop, on the first Ctrl-C, a
request without a time limit: uvicorn drains requests first, by design, and
the release's cancel set (``_cancel(uid)``) is private; a second Ctrl-C
stops waiting.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import weakref
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

from ._calls import GenerationCancelled, clock
from ._deadlines import LIMITS, limit_for_new_call
from ._thread_exit import arm_thread_exit

__all__ = ["arm_loaded_servers", "arm_server_threads", "stop_servers"]

#: Classes whose ``_run`` is the body of a generation thread of their own.
THREAD_CLASSES = ("ResponseGenerator",)
_ARMED = "__mlx_vlm_safe_armed__"
#: Generators whose thread started, and the token iterators they handed out.
_GENERATORS: weakref.WeakSet[Any] = weakref.WeakSet()
_ITERATORS: weakref.WeakSet[Any] = weakref.WeakSet()
#: How long the exit waits for each generator's thread (seconds).
STOP_WAIT = 5.0


def _armed_run(run: Callable[[Any], Any]) -> Callable[[Any], Any]:
    @functools.wraps(run)
    def _run(self: Any) -> Any:
        arm_thread_exit()
        with contextlib.suppress(TypeError):  # not weak-referenceable
            _GENERATORS.add(self)
        return run(self)

    setattr(_run, _ARMED, True)
    return _run


def _limited(tokens: Any, seconds: float, at: float) -> Iterator[Any]:
    """The request's tokens, until its deadline: then cancel it, raise.

    Closing the release's iterator is its own cancel (the request leaves
    the batch at the thread's next step).
    """
    count = 0
    try:
        for item in tokens:
            count += 1
            if LIMITS.closing:
                raise GenerationCancelled(
                    f"generation cancelled after {count} tokens (mlx_vlm_safe)"
                )
            if clock() >= at:
                raise TimeoutError(
                    f"generation stopped at its deadline of {seconds:g} s after "
                    f"{count} tokens (mlx_vlm_safe)"
                )
            yield item
    finally:
        close = getattr(tokens, "close", None)
        if callable(close):
            close()


def _remembering(generate: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(generate)
    def remembered(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = generate(self, *args, **kwargs)
        if isinstance(result, tuple) and len(result) == 2:
            context, tokens = result
            with contextlib.suppress(TypeError):
                _ITERATORS.add(tokens)
            limit = limit_for_new_call()
            if limit is not None:
                result = (context, _limited(tokens, *limit))
        return result

    setattr(remembered, _ARMED, True)
    return remembered


def stop_servers() -> int:
    """Cancel the server's open requests, stop its generation threads.

    Returns how many threads were stopped. Never raises: it runs at exit.
    """
    for iterator in tuple(_ITERATORS):
        close = getattr(iterator, "close", None)
        if callable(close):
            with contextlib.suppress(Exception):
                close()
    stopped = 0
    for generator in tuple(_GENERATORS):
        thread = getattr(generator, "_thread", None)
        stop = getattr(generator, "stop_and_join", None)
        if thread is None or not thread.is_alive() or not callable(stop):
            continue
        with contextlib.suppress(Exception):
            try:
                stop(timeout=STOP_WAIT)
            except TypeError:  # 0.5.0: no timeout argument (it waits 5 s)
                stop()
            stopped += 1
    return stopped


def arm_server_threads(module: ModuleType) -> None:
    """Arm the generation threads of the classes ``module`` defines. Never raises."""
    for name in THREAD_CLASSES:
        cls = module.__dict__.get(name)
        if not isinstance(cls, type) or cls.__module__ != module.__name__:
            continue
        for attribute, wrap in (("_run", _armed_run), ("generate", _remembering)):
            function = cls.__dict__.get(attribute)
            if callable(function) and not getattr(function, _ARMED, False):
                with contextlib.suppress(AttributeError, TypeError):
                    setattr(cls, attribute, wrap(function))


def arm_loaded_servers() -> None:
    """Arm the server modules imported before the patch."""
    for name, module in tuple(sys.modules.items()):
        if name.startswith("mlx_vlm.server") and isinstance(module, ModuleType):
            arm_server_threads(module)
