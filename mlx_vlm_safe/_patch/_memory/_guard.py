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
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from ..._log import log
from ..._retry import get_policy
from .. import _mlx
from .._calls import Call, GenerationCancelled, current_call
from . import _budget, _estimate
from ._device_room import with_allowance
from ._heap import map_large_blocks, trim_heap
from ._ledger import MemoryRefused, Reservation, Room, ledger

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


def _cache_memory() -> int:
    """Bytes in mlx's cache of freed buffers (0 where mlx cannot tell)."""
    mx = _mlx.core()
    owner = mx if hasattr(mx, "get_cache_memory") else getattr(mx, "metal", None)
    get_cache = getattr(owner, "get_cache_memory", None)
    try:
        return int(get_cache()) if callable(get_cache) else 0
    except Exception:  # an old or odd backend: nothing cached that we know of
        return 0


def _freed_cache() -> bool:
    """Return freed memory to the system; True if there was any to return.

    A generation that ended, failed or was stopped leaves its buffers in
    mlx's cache, still mapped, and glibc keeps freed heap in its arenas:
    under ``RLIMIT_AS`` or a cgroup limit both still count as used. Before
    refusing a call for lack of room, give them back and look again. This
    is why, before, a second round of concurrent calls found no room left
    although nothing was running.
    """
    mx = _mlx.core()
    owner = mx if hasattr(mx, "clear_cache") else getattr(mx, "metal", None)
    clear = getattr(owner, "clear_cache", None)
    freed = False
    try:
        if callable(clear) and _cache_memory() > 0:
            clear()
            freed = True
    except Exception:  # an old or odd backend: nothing freed
        freed = False
    return trim_heap() or freed


#: How the ledger reads and frees memory.
_ROOM = Room(read=_budget.read_budget, free=_freed_cache, reclaimable=_cache_memory)


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
    """The budget a call was checked against, its estimate and its reservation."""

    budget: _budget.Budget
    estimate: _estimate.Estimate | None
    reservation: Reservation | None = None


class Usage(NamedTuple):
    """Memory in use: mlx's active memory and the process's resident size."""

    mlx: int
    resident: int


def _wait_limit(settings: _budget.Settings) -> float | None:
    """How long a call may wait for memory: the setting, else the retry deadline."""
    if settings.wait is not None:
        return settings.wait
    return get_policy().deadline


def _stop(call: Call | None) -> Callable[[], BaseException | None]:
    """What ends a wait for memory early: the call's cancellation or deadline."""

    def stop() -> BaseException | None:
        if call is None:
            return None
        if call.cancelled:
            return GenerationCancelled("cancelled while waiting for memory")
        at = call.deadline_at
        if at is not None and time.monotonic() >= at:
            return TimeoutError(
                f"generation exceeded its deadline of {call.deadline:g} s while "
                "waiting for memory (mlx_vlm_safe)"
            )
        return None

    return stop


def _reserve(
    found: _estimate.Estimate, arch: _estimate.Architecture, budget: _budget.Budget
) -> int:
    """What a generation reserves: its estimate, plus its last growth's leftovers.

    Against mlx's own memory (``memory_limit``) the estimate is the peak. Against
    the system's figures (address space, resident memory) the KV cache's old
    buffers stay mapped in mlx's cache while the new ones are filled: when the
    cache grows to its final capacity, the previous capacity is still mapped.
    The in-flight check (``_need``) models the same, so a call admitted alone
    is never refused halfway through for a growth its reservation covered.
    On CUDA the memory is the device's, and its peak runs over the estimate
    (``_device_room.with_allowance``), whatever the budget's source.
    """
    if budget.source in MLX_FIGURES:
        return with_allowance(found.total)
    previous = max(found.capacity - _estimate.STEP, 0)
    return found.total + previous * arch.kv_bytes_per_position


def _refusal(need: int, budget: _budget.Budget, why: str, found: Any) -> str:
    """The words of a ``MemoryError`` from admission (see ``Ledger.admit``)."""
    if why == "never":
        what = "it can never fit, even with every generation in flight ended"
    elif why == "alone":
        what = "it does not fit even with no other generation running"
    else:
        what = f"it did not fit next to the generations in flight in time ({why})"
    return (
        f"this generation needs about {_mib(need)} "
        f"(KV cache {_mib(found.kv_cache)} for {found.capacity} positions: "
        f"{found.prompt_tokens} prompt tokens + max_tokens "
        f"{found.positions - found.prompt_tokens}; prefill {_mib(found.prefill)}) "
        f"but only {_mib(budget.room or 0)} is available ({budget.source}, after "
        f"a {_mib(budget.margin)} margin): {what}; refused before allocating "
        "(mlx_vlm_safe memory guard)"
    )


def preflight(
    where: dict[str, int],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    max_tokens: object,
) -> Preflight | None:
    """Reserve the call's estimate; raise ``MemoryError`` if it cannot fit.

    The reservation (in the ``Preflight``) must be released when the
    generation ends; the guard's ``_watch`` does that.
    """
    budget = _budget.read_budget()
    if budget is None or budget.room is None:
        _notes["budget"] = _budget.describe(budget)
        return None
    if "RLIMIT_AS" in budget.sources and map_large_blocks():
        _notes["heap"] = "large blocks mapped on their own (RLIMIT_AS)"
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
    call = current_call()
    settings = _budget.settings()
    asked = time.monotonic()
    try:
        reservation, waited = ledger.admit(
            _reserve(found, arch, budget),
            budget,
            room=_ROOM,
            wait=_wait_limit(settings),
            stop=_stop(call),
            describe=lambda need, room, why: _refusal(need, room, why, found),
        )
    except BaseException as exc:
        if call is not None:
            call.memory_wait += time.monotonic() - asked
            call.memory_refusals += isinstance(exc, MemoryError)
        if not isinstance(exc, MemoryError) or isinstance(exc, MemoryRefused):
            raise
        if settings.shorten:
            raise
        raise MemoryRefused(*exc.args) from None  # no ladder: the caller said so
    if call is not None:
        call.memory_wait += waited
    return Preflight(budget, found, reservation)


def _watch(
    stream: Iterator[Any],
    start: Usage,
    checked: Preflight,
    arch: _estimate.Architecture,
    call: Call | None,
) -> Iterator[Any]:
    """Pass items through; check the room every ``CHECK_EVERY`` items.

    ``start`` is mlx's memory and the resident size before the release's
    ``stream_generate`` was called (some releases prefill at call time).
    The call's reservation goes back to the ledger when the stream ends,
    however it ends; one never started goes back when it is collected.
    """
    found, reservation = checked.estimate, checked.reservation
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
                try:
                    _check(
                        found=found,
                        arch=arch,
                        items=items,
                        jump=jump,
                        grown=now.mlx - start.mlx,
                        reservation=reservation,
                    )
                except MemoryError as exc:
                    if call is not None:
                        call.memory_refusals += 1
                    if _budget.settings().shorten:
                        raise
                    raise MemoryRefused(*exc.args) from None
            yield item
    except RuntimeError as exc:
        if call is not None and allocation_failed(exc):
            call.memory_refusals += 1
        raise
    finally:
        if reservation is not None:
            ledger.release(reservation)
        close = getattr(stream, "close", None)
        if close is not None:
            close()


#: Budget sources that count mlx's own allocations (not the process's mapped
#: memory): growth there is the KV cache's new capacity, not its old one too.
MLX_FIGURES = frozenset({"memory_limit", "gpu_free", "mlx_limit"})
#: How mlx words an allocation that failed (CUDA, Metal), lower case.
ALLOCATION_FAILED = (
    "out of memory",
    "cudamalloc",
    "[metal::malloc]",
    "attempting to allocate",
)


def allocation_failed(exc: BaseException) -> bool:
    """Whether ``exc`` is mlx saying an allocation failed (CUDA, Metal).

    On CUDA and Metal mlx reports a failed allocation as a ``RuntimeError``
    (``cudaMallocAsync ... out of memory``) and the process lives on. It
    reaches the caller as itself (their own type, message and traceback), is
    retried like the guard's own ``MemoryError`` (the retry rules), and counts
    as a memory refusal in the call's record.
    """
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(m in text for m in ALLOCATION_FAILED)


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


def _room(
    fresh: _budget.Budget,
    grown: int,
    reservation: Reservation | None,
    *,
    reserved_for: bool = False,
) -> int:
    """The room this generation may grow into, the others' growth set aside.

    ``reserved_for``: the growth stays within the call's own reservation.
    Admission set that memory aside for it, so against the system's figures
    only what is really there counts (the others' reservations are theirs,
    and were admitted next to this one).
    """
    if reserved_for and fresh.source != "memory_limit":
        return fresh.room or 0
    # Not in the ledger (no estimate): every reservation is someone else's.
    mine = Reservation(0) if reservation is None else reservation
    others = ledger.room_for(fresh, mine)
    if fresh.source != "memory_limit":
        return others
    # A fixed budget for every generation in flight: what this one holds is
    # mlx's growth since it started, unless others grew mlx's memory too.
    alone = ledger.alone(mine)
    return others - (grown if alone or reservation is None else reservation.held)


def _check(
    *,
    found: _estimate.Estimate | None,
    arch: _estimate.Architecture,
    items: int,
    jump: int,
    grown: int,
    reservation: Reservation | None,
) -> None:
    fresh = _budget.read_budget()
    if fresh is None or fresh.room is None:
        return
    mlx_figures = fresh.source in MLX_FIGURES
    reserved_for = False
    if reservation is not None and found is not None:
        reservation.held = _estimate.held(found, arch, items, reservation.total)
        # Where the check looks ahead to (``_need``), never past the capacity
        # it reserved for: is that still within its reservation?
        ahead = min(items + 2 * CHECK_EVERY, found.capacity - found.prompt_tokens)
        fits = _estimate.footprint(found, arch, ahead, mlx_figures=mlx_figures)
        reserved_for = fits <= reservation.total
    need = _need(found, arch, items, jump, mlx_figures)
    room = _room(fresh, grown, reservation, reserved_for=reserved_for)
    if need > room and _freed_cache():
        fresh = _budget.read_budget() or fresh
        room = _room(fresh, grown, reservation, reserved_for=reserved_for)
    if need > room:
        counted = (
            "within this generation's own reservation"
            if reserved_for and fresh.source != "memory_limit"
            else "with what the other generations in flight will still take set aside"
        )
        raise MemoryError(
            f"generation stopped after {items} tokens: the next tokens need about "
            f"{_mib(need)} but only {_mib(max(room, 0))} is left ({fresh.source}, "
            f"after a {_mib(fresh.margin)} margin, {counted}) "
            "(mlx_vlm_safe memory guard)"
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
        except (MemoryError, TimeoutError, GenerationCancelled):
            raise  # the guard's own answers: refused, or stopped while waiting
        except Exception:  # the guard must never be why a call fails
            log.warning("memory guard: pre-flight check failed", exc_info=True)
            checked = None
        if checked is None:
            return original(*args, **kwargs)
        start = Usage(_mlx_memory(), _resident() if checked.estimate is None else 0)
        try:
            stream = original(*args, **kwargs)
        except BaseException:
            if checked.reservation is not None:
                ledger.release(checked.reservation)
            raise
        arch = _estimate.architecture(_argument("model", where, args, kwargs))
        return _watch(stream, start, checked, arch, current_call())

    return guarded
