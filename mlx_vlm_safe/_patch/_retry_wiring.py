"""Wire the generic retry engine to the installed release's generate path.

Strictly private. The engine (``_retry``) knows nothing about mlx-vlm; this
module tells it what it needs: which keywords the release accepts (so the
ladder never injects one it does not know), the release's defaults (so a step
never raises the caller's budget above them), when a result counts as empty,
how many tokens an attempt produced, and (``_retry_rules``) which mlx and
mlx-vlm failures a retry can fix and the ``max_tokens`` ladder.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .._retry import CallSpec, Runtime, call_runner, stream_with_retry
from ._behaviour import Behaviour
from ._calls import CURRENT, clock, stop_if_due
from ._locate import LADDER_KEYWORDS, Located
from ._results import EMPTY, TOKENS, StreamEnd, last_end
from ._retry_rules import LADDER, RULES

_current = CURRENT.get
CallRunner = Callable[[Callable[..., Any], tuple[Any, ...], Mapping[str, Any]], Any]
StreamRunner = Callable[
    [Callable[..., Iterator[Any]], tuple[Any, ...], Mapping[str, Any]], Iterator[Any]
]


def _call_end() -> StreamEnd | None:
    """How the running call's stream ended (``None``: none ended yet).

    Inside the call's frames that is the call's own record (``CURRENT``).
    A caller's stream is past them when it ends (the last item is pulled
    by the consumer, on any thread): there the stream has just written it
    in the consumer's context (``_wrappers._ended``).
    """
    call = _current()
    return last_end() if call is None else call.end


# Both run on every call, so each is one short frame.
def _empty_generation(result: object) -> bool:
    """An attempt that produced nothing and raised nothing."""
    if result is None:
        return True
    end = _call_end()
    return end is not None and end[EMPTY]


def _tokens() -> int:
    """Tokens the stream of this call produced (0 if none ended in it)."""
    end = _call_end()
    return 0 if end is None else end[TOKENS]


#: The longest a retry wait sleeps before it looks at its call again (seconds):
#: ``cancel_all()`` and the shutdown end a wait within this.
WAIT_SLICE = 0.05


def _wait(seconds: float) -> None:
    """A retry wait that a cancelled call, or its deadline, cuts short.

    Runs inside the call's frames (``CURRENT`` is the call: ``generate()``
    sets it, and a stream pulls its first item, the only place it retries,
    with it set). Past the deadline it raises ``TimeoutError`` like a token
    step would; :func:`_time_left` normally gives up before such a wait.
    """
    call = CURRENT.get()
    if call is None:
        time.sleep(seconds)
        return
    end = clock() + seconds
    while True:
        if call.watch:
            stop_if_due(call, 0)
        left = end - clock()
        if left <= 0:
            return
        time.sleep(min(left, WAIT_SLICE))


def _time_left() -> float | None:
    """Seconds before the running call's deadline (``None``: it has none)."""
    call = CURRENT.get()
    if call is None or call.deadline_at is None:
        return None
    return call.deadline_at - clock()


#: The retry engine's clock and sleep for the patched calls: waits count
#: against the call's deadline and end when the call is cancelled.
RUNTIME = Runtime(sleep=_wait, time_left=_time_left)


def _positions(function: Callable[..., Any] | None) -> dict[str, int]:
    """Where a ladder keyword can be passed by position (0.1.0-0.1.6 generate)."""
    if function is None:
        return {}
    params = list(inspect.signature(function).parameters.values())
    return {
        p.name: i
        for i, p in enumerate(params)
        if p.name in LADDER_KEYWORDS
        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def runners(located: Located, behaviour: Behaviour) -> tuple[CallRunner, StreamRunner]:
    """The retry runners for ``generate()`` and ``stream_generate()``."""
    generate_spec = CallSpec(
        name=behaviour.name,
        accepted_kwargs=located.accepted_kwargs,
        defaults=located.defaults,
        is_empty=_empty_generation,
        progress=_tokens,
        positions=_positions(located.generate),
        rules=RULES,
        ladder=LADDER,
    )
    stream_spec = CallSpec(
        name=behaviour.name.replace("generate", "stream_generate"),
        accepted_kwargs=located.accepted_kwargs,
        defaults=located.defaults,
        progress=_tokens,
        positions=_positions(located.stream_generate),
        rules=RULES,
        ladder=LADDER,
    )

    stream: StreamRunner = functools.partial(
        stream_with_retry, spec=stream_spec, runtime=RUNTIME
    )
    return call_runner(generate_spec, runtime=RUNTIME), stream
