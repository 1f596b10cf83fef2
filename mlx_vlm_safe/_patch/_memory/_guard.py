"""The memory guard: out of memory becomes ``MemoryError``, never a dead process.

Strictly private. :func:`guard_stream` wraps the release's ``stream_generate``
once, at patch time; every generation (each retry attempt included, with the
ladder's smaller ``max_tokens`` / ``prefill_step_size``) then goes through:

1. Pre-flight, before any allocation: the budget (``_budget``) against the
   estimate (``_estimate``). Too big: ``MemoryError`` naming both numbers,
   which the retry table classifies as retryable, so the ladder gets its
   chance.
2. In flight, every ``CHECK_EVERY`` tokens (never a syscall per token): the
   room left now, from the same sources, must hold what the next tokens will
   add (the next KV-cache step; where the architecture is unknown, twice the
   largest growth seen between two checks, from mlx's active memory and the
   process's resident size). Otherwise ``MemoryError`` after the
   tokens already yielded: a cut answer is never passed off as complete.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from ..._log import log
from .. import _mlx
from . import _budget, _estimate

__all__ = ["CHECK_EVERY", "guard_stream", "last_note"]

#: Tokens between two in-flight checks.
CHECK_EVERY = 32
_NAMES = ("model", "processor", "prompt", "image")
#: What the guard last decided, for ``report()``: budget and estimate notes.
_notes: dict[str, str] = {}


def last_note() -> str | None:
    """One line on the memory guard for ``report()`` (None before any call)."""
    if not _notes:
        return None
    return "; ".join(f"{k}: {v}" for k, v in _notes.items())


def _mlx_memory() -> int:
    """The active memory of mlx (bytes); 0 where mlx cannot tell.

    Active, not active + cache: a new generation often takes its buffers from
    mlx's cache of freed ones (active grows, the sum does not), and the size
    of what a generation takes is what predicts its next growth. What the
    process holds in total is read from the system's sources at each check.
    """
    mx = _mlx.core()
    name = "get_active_memory"
    fn = getattr(mx, name, None) or getattr(getattr(mx, "metal", None), name, None)
    if callable(fn):
        try:
            return int(fn())
        except Exception:  # an old or odd backend: count nothing
            return 0
    return 0


def _freed_cache() -> bool:
    """Return mlx's cache of freed buffers to the system; True if there was any.

    A generation that failed or was stopped leaves its buffers there, still
    mapped: before refusing a call for lack of room, give them back and look
    again.
    """
    mx = _mlx.core()
    owner = mx if hasattr(mx, "clear_cache") else getattr(mx, "metal", None)
    get_cache = getattr(owner, "get_cache_memory", None)
    clear = getattr(owner, "clear_cache", None)
    try:
        if callable(get_cache) and callable(clear) and get_cache() > 0:
            clear()
            return True
    except Exception:  # an old or odd backend: nothing freed
        return False
    return False


def _resident() -> int:
    space = _budget.address_space()
    return space.resident if space is not None else 0


def _positions_of(original: Callable[..., Any]) -> dict[str, int]:
    try:
        params = list(inspect.signature(original).parameters)
    except (TypeError, ValueError):
        return {}
    return {name: params.index(name) for name in _NAMES if name in params}


def _argument(
    name: str, where: dict[str, int], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    position = where.get(name)
    if position is not None and position < len(args):
        return args[position]
    return kwargs.get(name)


def _mib(value: int) -> str:
    return _budget.mib(value)


class Preflight(NamedTuple):
    """The budget a call was checked against, and its estimate if one was made."""

    budget: _budget.Budget
    estimate: _estimate.Estimate | None


class Usage(NamedTuple):
    """Memory in use: mlx's active memory and the process's resident size."""

    mlx: int
    resident: int


def preflight(
    where: dict[str, int],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    max_tokens: object,
) -> Preflight | None:
    """Check the call against the budget; raise ``MemoryError`` if it cannot fit."""
    budget = _budget.read_budget()
    if budget is None or budget.room is None:
        _notes["budget"] = _budget.describe(budget)
        return None
    model = _argument("model", where, args, kwargs)
    arch = _estimate.architecture(model)
    found = _estimate.estimate(
        arch,
        processor=_argument("processor", where, args, kwargs),
        prompt=_argument("prompt", where, args, kwargs),
        image=_argument("image", where, args, kwargs),
        kwargs=kwargs,
        max_tokens=max_tokens,
    )
    _notes["budget"] = f"{_budget.describe(budget)}"
    if isinstance(found, str):
        _notes["estimate"] = f"skipped ({found}); in-flight check only"
        return Preflight(budget, None)
    _notes["estimate"] = (
        f"{arch.model_type}: {arch.kv_bytes_per_position} bytes of KV cache "
        "per position"
    )
    if found.total > budget.room and _freed_cache():
        budget = _budget.read_budget() or budget
    if budget.room is not None and found.total > budget.room:
        raise MemoryError(
            f"this generation needs about {_mib(found.total)} "
            f"(KV cache {_mib(found.kv_cache)} for {found.capacity} positions: "
            f"{found.prompt_tokens} prompt tokens + max_tokens {max_tokens}; "
            f"prefill {_mib(found.prefill)}) but only {_mib(budget.room)} "
            f"is available ({budget.source}, after a {_mib(budget.margin)} margin); "
            "refused before allocating (mlx_vlm_safe memory guard)"
        )
    return Preflight(budget, found)


def _watch(
    stream: Iterator[Any],
    start: Usage,
    found: _estimate.Estimate | None,
    arch: _estimate.Architecture,
) -> Iterator[Any]:
    """Pass items through; check the room every ``CHECK_EVERY`` items.

    ``start`` is mlx's memory and the resident size before the release's
    ``stream_generate`` was called (some releases prefill at call time).
    """
    items = 0
    next_check = CHECK_EVERY
    last = start
    jump = 0
    try:
        for item in stream:
            items += 1
            if items >= next_check:
                next_check += CHECK_EVERY
                # The resident size only feeds ``jump`` (no estimate).
                now = Usage(_mlx_memory(), _resident() if found is None else 0)
                growth = max(now.mlx - last.mlx, now.resident - last.resident)
                jump = max(jump, growth)
                last = now
                _check(
                    found=found, arch=arch, items=items, jump=jump, now=now, start=start
                )
            yield item
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()


def _need(
    found: _estimate.Estimate | None,
    arch: _estimate.Architecture,
    items: int,
    jump: int,
    capped: bool,
) -> int:
    """What the tokens until after the next check may add (bytes)."""
    if found is None:
        return 2 * jump  # no model of the next growth: twice the largest seen
    step, per_position = _estimate.STEP, arch.kv_bytes_per_position
    here = found.prompt_tokens + items
    # Two intervals ahead: the prompt count may be a few tokens short (the
    # processor adds tokens of its own), and a growth must not slip between
    # two checks; never past the call's own end (plus that slack).
    ahead = min(here + 2 * CHECK_EVERY, found.positions + CHECK_EVERY)
    here = -(-here // step) * step
    ahead = -(-ahead // step) * step
    if ahead == here:
        return 0
    if capped:
        # mlx's active memory: the new capacity, and one layer's old buffer
        # alive next to its new one while it is copied.
        return (ahead - here) * per_position + here * per_position // arch.layers
    # The process: each layer's new buffer is allocated before the old one is
    # freed, and mlx may keep the old one cached (mapped).
    return ahead * per_position


def _room(fresh: _budget.Budget, grown: int) -> int:
    if fresh.source == "memory_limit":  # a per-generation cap on mlx's memory
        return fresh.sources["memory_limit"] - grown
    return fresh.room or 0


def _check(
    *,
    found: _estimate.Estimate | None,
    arch: _estimate.Architecture,
    items: int,
    jump: int,
    now: Usage,
    start: Usage,
) -> None:
    fresh = _budget.read_budget()
    if fresh is None or fresh.room is None:
        return
    need = _need(found, arch, items, jump, fresh.source == "memory_limit")
    room = _room(fresh, now.mlx - start.mlx)
    if need > room and _freed_cache():
        fresh = _budget.read_budget() or fresh
        room = _room(fresh, now.mlx - start.mlx)
    if need > room:
        raise MemoryError(
            f"generation stopped after {items} tokens: the next tokens need about "
            f"{_mib(need)} but only {_mib(max(room, 0))} is left ({fresh.source}, "
            f"after a {_mib(fresh.margin)} margin) (mlx_vlm_safe memory guard)"
        )


def guard_stream(
    original: Callable[..., Iterator[Any]], default_max_tokens: object
) -> Callable[..., Iterator[Any]]:
    """``original`` with the pre-flight and in-flight checks around it."""
    where = _positions_of(original)
    config = _budget.settings

    def guarded(*args: Any, **kwargs: Any) -> Iterator[Any]:
        if config().limit == "off":  # configured off: no frame more than this
            _notes["budget"] = "off"
            return original(*args, **kwargs)
        try:
            checked = preflight(
                where, args, kwargs, kwargs.get("max_tokens", default_max_tokens)
            )
        except MemoryError:
            raise
        except Exception:  # the guard must never be why a call fails
            log.warning("memory guard: pre-flight check failed", exc_info=True)
            checked = None
        if checked is None:
            return original(*args, **kwargs)
        start = Usage(_mlx_memory(), _resident() if checked.estimate is None else 0)
        stream = original(*args, **kwargs)
        arch = _estimate.architecture(_argument("model", where, args, kwargs))
        return _watch(stream, start, checked.estimate, arch)

    return guarded
