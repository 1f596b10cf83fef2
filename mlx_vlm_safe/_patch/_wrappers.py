"""The wrappers around ``stream_generate`` and ``generate``: the hot path.

Strictly private. :func:`wrap_stream_generate` passes every item through
unchanged, records how the stream ended (for ``last_outcome()``) and, where
the release's ``generate()`` dereferences the last item unguarded, never ends
without an item; installed as the module global ``generate()`` looks up, it
protects even a ``generate`` captured before the patch. :func:`wrap_generate`
never returns ``None`` and adds the retry policy.

Plain closures, not ``wrapt`` proxies: these replace module-level functions
(no descriptor binding to get right), ``functools.update_wrapper`` keeps the
signature, and a closure is several times cheaper per call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .._retry import STATE
from ._behaviour import Behaviour
from ._calls import CURRENT, Call, clock, finish, stop_if_due
from ._locate import mark
from ._memory._guard import guard_stream
from ._results import (
    INCOMPLETE,
    REASON,
    ZERO_TOKENS_END,
    ran_out,
    record_end,
    text_end,
    text_of,
)
from ._thread_exit import arm, per_thread


def check_max_tokens(kwargs: Mapping[str, object]) -> None:
    """Refuse a ``max_tokens`` that would make mlx-vlm generate forever.

    mlx-vlm stops when the token counter *equals* ``max_tokens``; a string
    (``"512"`` straight from a JSON body) or a negative number never does, and
    the call runs until memory runs out. That is bad input: say so at once.
    The wrappers call it only when their inline check (a non-negative ``int``,
    or nothing) did not already pass the value.
    """
    value = kwargs.get("max_tokens")
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"max_tokens must be an int, got {value!r}")
    if value < 0:
        raise ValueError(f"max_tokens must be >= 0, got {value!r}")


_NO_ITEM: Any = object()  # "no never-empty guard" for ``_observed``
_call_state = STATE.get


def _zero_tokens(item: object) -> Iterator[object]:
    """The stream of ``max_tokens=0``: one empty item, ended by length.

    Newest upstream's behaviour on every release: 0.1.0-0.5.0 raise
    UnboundLocalError ('token') instead, and nothing is generated either way.
    """
    record_end(ZERO_TOKENS_END)
    yield item


def _observed(
    stream: Iterator[object],
    max_tokens: object,
    empty_item: object = _NO_ITEM,
    call: Call | None = None,
) -> Iterator[object]:
    """Pass items through; record how the stream ended on the call's state.

    With ``empty_item`` it is also the never-empty guard: a stream that ends
    without an item yields ``empty_item`` once. One generator for both keeps
    the common path to a single extra layer. Its bookkeeping is inline and is
    one plain tuple (``_results.StreamEnd``) written on ``call`` and, once,
    in the context's ``LAST_END``: no ``ContextVar.set`` per token, no
    dataclass, because this runs on every token (the README's "What the patch
    costs" has the figures). The first item is pulled with ``call`` current,
    because that is when the release's stream starts and the memory guard
    admits it, perhaps on a thread that never saw the caller's context.
    Between items, one attribute read says whether the call must stop (a
    deadline, a cancellation): see ``_calls.stop_if_due``.
    """
    items = 0
    last: object = None
    reason: object = INCOMPLETE  # until the stream is exhausted
    if call is None:  # a stream nobody called through the wrappers (tests)
        call = Call("stream_generate", max_tokens)
    call.attempts += 1
    # Each thread that makes an item frees its mlx streams when it ends; the
    # check is one attribute lookup, inline because it runs once per token.
    thread = per_thread
    try:
        try:
            thread.guard  # noqa: B018
        except AttributeError:
            arm()
        if call.watch:  # cancelled, or past its deadline, before it starts
            stop_if_due(call, 0)
        token = CURRENT.set(call)
        try:
            it = iter(stream)
            item = next(it, _NO_ITEM)
        finally:
            CURRENT.reset(token)
        if item is not _NO_ITEM:
            call.first_token = clock()
        while item is not _NO_ITEM:
            items += 1
            last = item
            if call.watch:
                stop_if_due(call, items)
            yield item
            try:  # resumed, maybe on another thread: it makes the next item
                thread.guard  # noqa: B018
            except AttributeError:
                arm()
            item = next(it, _NO_ITEM)
        reason = getattr(last, "finish_reason", None)
    finally:
        _ended(call, last, items, reason, max_tokens)
        if reason is INCOMPLETE:  # raised or closed early: close what we started
            close = getattr(stream, "close", None)
            if close is not None:
                close()
    if items == 0 and empty_item is not _NO_ITEM:
        yield empty_item


def _ended(
    call: Call, last: object, items: int, reason: object, max_tokens: object
) -> None:
    """Record how a stream ended, on ``call`` and for ``last_outcome()``.

    The context that ends the stream is the one that pulled its last item:
    the caller's, where ``last_outcome()`` is asked (and where the retry
    engine's progress reader looks once the stream has ended).
    """
    tokens = getattr(last, "generation_tokens", items)
    if tokens.__class__ is not int:
        tokens = items
    empty = reason is not INCOMPLETE and (
        items == 0 or (tokens == 0 and max_tokens != 0)
    )
    prompt = getattr(last, "prompt_tokens", None)
    if prompt.__class__ is int:
        call.input_tokens = prompt
    end = (tokens, empty, reason, max_tokens, call.requested)
    call.end = end
    record_end(end)


def _recorded(stream: Iterator[object], call: Call) -> Iterator[object]:
    """A caller's own stream: its record when it ends, is closed, or raises.

    The first item is pulled with ``call`` current: retries happen only before
    it, and the retry waits read the call's deadline and cancellation there
    (``_retry_wiring``).
    """
    error: BaseException | None = None
    try:
        token = CURRENT.set(call)
        try:
            first = next(stream, _NO_ITEM)
        finally:
            CURRENT.reset(token)
        if first is _NO_ITEM:
            return
        yield first
        yield from stream
    except BaseException as exc:  # recorded, never swallowed
        error = exc
        raise
    finally:
        close = getattr(stream, "close", None)
        try:
            if close is not None:  # closed early: stop the generation now
                close()
        finally:
            finish(call, error)


def _never_empty(stream: Iterator[object], empty_item: object) -> Iterator[object]:
    """Yield ``empty_item`` if ``stream`` ends without an item."""
    items = 0
    try:
        for item in stream:
            items += 1
            yield item
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    if items == 0:
        yield empty_item


#: A stream layer of a fix: ``stream_generate`` in, ``stream_generate`` out.
StreamLayer = Callable[
    [Callable[..., Iterator[object]]], Callable[..., Iterator[object]]
]


def wrap_stream_generate(
    original: Callable[..., Iterator[object]],
    behaviour: Behaviour,
    retrying: Callable[..., Iterator[object]] | None = None,
    *,
    inner: tuple[StreamLayer, ...] = (),
    outer: tuple[StreamLayer, ...] = (),
) -> Callable[..., Iterator[object]]:
    """Wrap ``stream_generate``: observe, retry before the first item, never empty.

    Called directly, the layers are, outermost first: the caller's record
    (``_recorded``), the never-empty guard (only where the release's
    ``generate()`` needs it), the retry policy (which must still see an empty
    stream as empty, so it sits inside the guard), the observer. Called while
    a retry attempt is running (the usual case: from inside the patched
    ``generate()``, whose own loop owns the retries and the record) or inside
    ``retries_disabled()``, a retry layer would only call through, so the
    observer alone runs, doubling as the guard.

    Inside the observer run the fixes' stream layers, which the plan hands
    over in ``FIXES`` order: ``inner`` ones (around mlx's own work: they see
    each step) inside the memory guard, ``outer`` ones (they change the
    call's arguments) outside it, first listed innermost.
    """
    default_max_tokens = behaviour.default_max_tokens
    empty_item = behaviour.empty_item if behaviour.never_empty else _NO_ITEM
    zero_item = ran_out(behaviour.empty_item)
    run = original
    for layer in inner:
        run = layer(run)
    run = guard_stream(run, default_max_tokens)  # the memory guard (_memory)
    for layer in outer:
        run = layer(run)

    def stream_generate(*args: object, **kwargs: object) -> Iterator[object]:
        max_tokens = kwargs.get("max_tokens", default_max_tokens)
        if max_tokens.__class__ is not int or max_tokens < 1:
            check_max_tokens(kwargs)
            if max_tokens == 0:
                return _zero_tokens(zero_item)
        driver = CURRENT.get()
        if driver is not None:  # our generate() drives it: part of that call
            return _observed(run(*args, **kwargs), max_tokens, empty_item, driver)
        call = Call("stream_generate", max_tokens)
        call.describe(args, kwargs)
        if retrying is None or _call_state().active:
            try:
                stream = run(*args, **kwargs)
            except BaseException as exc:
                finish(call, exc)
                raise
            return _recorded(_observed(stream, max_tokens, empty_item, call), call)

        def attempt(*args: object, **kwargs: object) -> Iterator[object]:
            # One retry attempt, with the attempt's own max_tokens.
            used = kwargs.get("max_tokens", default_max_tokens)
            return _observed(run(*args, **kwargs), used, _NO_ITEM, call)

        stream = retrying(attempt, args, kwargs)
        if empty_item is not _NO_ITEM:
            stream = _never_empty(stream, empty_item)
        return _recorded(stream, call)

    return mark(stream_generate, original)


def wrap_generate(
    original: Callable[..., object],
    behaviour: Behaviour,
    retrying: Callable[..., object] | None = None,
) -> Callable[..., object]:
    """Wrap ``generate``: never ``None``; retries through ``retrying``.

    The outcome comes from the stream the release's ``generate()`` drives;
    where no stream reported (0.1.0-0.1.6 call ``generate_step`` themselves)
    it is judged by the text. ``max_tokens`` is checked here, on entry, even
    though the stream wrapper checks it too: a bad value must fail before any
    of the release's own code runs, whatever that code does first. The call
    is made current (``_calls.CURRENT``) for the release's frames, so the
    stream it drives writes on it, and ends in one record.
    """
    call_with = retrying
    default_max_tokens = behaviour.default_max_tokens

    def generate(*args: object, **kwargs: object) -> object:
        max_tokens = kwargs.get("max_tokens")
        if max_tokens is not None and (
            max_tokens.__class__ is not int or max_tokens < 1
        ):
            check_max_tokens(kwargs)
            if max_tokens == 0:
                record_end(ZERO_TOKENS_END)
                zero = Call("generate", 0)
                zero.end = ZERO_TOKENS_END
                result = behaviour.zero_tokens()
                finish(zero, None, result=result)
                return result
        try:  # 0.1.0-0.1.6 generate without a stream: arm the thread here too
            per_thread.guard  # noqa: B018
        except AttributeError:
            arm()
        call = Call(
            "generate", default_max_tokens if max_tokens is None else max_tokens
        )
        call.describe(args, kwargs)
        token = CURRENT.set(call)
        try:
            if call_with is None:
                result = original(*args, **kwargs)
            else:
                result = call_with(original, args, kwargs)
        except BaseException as exc:
            finish(call, exc, attempts=_attempts())
            raise
        finally:
            CURRENT.reset(token)
        if result is None:
            result = behaviour.empty()
        end = call.end
        if end is None or end[REASON] is INCOMPLETE:
            # No stream told us how it ended (0.1.0-0.1.6 drive generate_step
            # themselves; or upstream closed it early and returned anyway):
            # judge by the text.
            end = text_end(text_of(result))
            call.end = end
            record_end(end)
        finish(call, None, attempts=_attempts(), result=result)
        return result

    return mark(generate, original)


def _attempts() -> int | None:
    """Attempts the retry engine made for the call that just ended here."""
    records = getattr(_call_state(), "records", None)
    return None if not records else len(records)
