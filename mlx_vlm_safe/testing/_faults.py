"""Plant faults into the real mlx-vlm generation, for tests.

Why: the failures this library exists for (an out-of-memory error in the
middle of prefill, an error after k tokens, Ctrl-C in the middle of a
generation, a stream that ends with nothing) are hard to cause on purpose with
a real model. These helpers put them exactly where they would happen, while
everything around them (``load()``, preprocessing, the vision tower,
prefill, decoding, detokenising) stays the real code of the installed release.

Two seams, both looked up at call time, so they reach every caller, including
references captured before the swap:

* ``generate_step``: ``stream_generate`` looks it up in its module's globals on
  every call (every release from 0.1.7 on). Faults *between* tokens go here.
* The model's language model, for faults *during prefill*: ``generate_step``
  receives the model and its first call of ``model.language_model`` is the
  prefill (after the vision tower and the input embeddings have run), on every
  release whose tiny checkpoint loads. For the duration of one generation the
  language model instance gets a subclass whose ``__call__`` raises once,
  then calls through; its class is put back when the generation ends (and, as
  a safety net, when the ``with`` block ends).

Test-only: the swaps are visible to every thread while they are in place.

Example::

    with plant_fault(MemoryError(), during_prefill=True, times=1) as fault:
        result = mlx_vlm.generate(model, processor, prompt, image=[image])
    assert fault.fired == 1 and fault.calls == 2  # failed once, then recovered
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any, Literal

from .._patch import locate

__all__ = ["FaultPlan", "FaultRecord", "empty_stream", "plant_fault"]


@dataclasses.dataclass
class FaultRecord:
    """What a planted fault saw: calls made, tokens let through, faults fired."""

    calls: int = 0
    tokens: int = 0
    fired: int = 0


def _stream_scope() -> dict[str, Any]:
    located = locate(importlib.import_module("mlx_vlm"))
    if located.stream_generate is None:
        raise RuntimeError("this mlx-vlm release has no stream_generate to plant into")
    scope: dict[str, Any] = located.stream_generate.__globals__
    if not callable(scope.get("generate_step")):
        raise RuntimeError("this mlx-vlm release has no generate_step seam")
    return scope


# --- the prefill seam ----------------------------------------------------------

#: id(language model instance) -> what to do on its next call (raise).
_ARMED: dict[int, Callable[[], None]] = {}
#: original class -> its faulting subclass; one per class, so planting faults
#: in a loop creates no new classes (and no garbage for a soak test to see).
_FAULTING: dict[type, type] = {}


def _faulting_class(cls: type) -> type:
    """A subclass of ``cls`` whose instances fire their armed fault, once."""
    existing = _FAULTING.get(cls)
    if existing is not None:
        return existing

    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        fire = _ARMED.pop(id(self), None)
        if fire is not None:
            fire()
        return super(sub, self).__call__(*args, **kwargs)  # type: ignore[arg-type]

    namespace = {
        "__call__": __call__,
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
    }
    sub = type(cls.__name__, (cls,), namespace)
    _FAULTING[cls] = sub
    return sub


def _language_model(real: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    """The instance whose first call in this generation is the prefill."""
    try:
        model = inspect.signature(real).bind_partial(*args, **kwargs).arguments["model"]
    except (TypeError, KeyError):
        raise RuntimeError(
            "generate_step of this mlx-vlm release takes no `model`: "
            "cannot plant a fault during prefill"
        ) from None
    return getattr(model, "language_model", model)


@contextlib.contextmanager
def _armed_prefill(
    target: Any, fire: Callable[[], None], swapped: list[tuple[Any, type]]
) -> Iterator[None]:
    """Arm ``target``'s next call to ``fire``; undo the swap afterwards."""
    cls = type(target)
    if cls not in _FAULTING.values():
        target.__class__ = _faulting_class(cls)
        swapped.append((target, cls))
    _ARMED[id(target)] = fire
    try:
        yield
    finally:
        _ARMED.pop(id(target), None)
        _restore(swapped)


def _restore(swapped: list[tuple[Any, type]]) -> None:
    while swapped:
        target, cls = swapped.pop()
        if type(target) is _FAULTING.get(cls):
            target.__class__ = cls


# --- plant_fault ---------------------------------------------------------------


@contextlib.contextmanager
def plant_fault(
    exc: BaseException | type[BaseException],
    *,
    after_tokens: int | None = 0,
    times: int | None = None,
    during_prefill: bool = False,
) -> Iterator[FaultRecord]:
    """Raise ``exc`` inside the real generation, at a chosen point.

    Args:
        exc: any ``BaseException`` instance or class (``KeyboardInterrupt``
            included: it is raised exactly where Ctrl-C would land). An
            instance is raised as is, so ``pytest.raises(...).value is exc``
            tells whether the caller got the very object.
        after_tokens: ``0`` raises before the first token, before the real
            ``generate_step`` starts (where argument errors happen); ``k``
            lets k real tokens through first; ``None`` raises when the real
            decoder is done (at the final item).
        times: fire only on the first ``times`` generations (``None``: always),
            to make a transient failure that a retry recovers from.
        during_prefill: raise from inside the model's first forward call of
            the generation (the prefill: the vision tower and the input
            embeddings have already run), where out-of-memory errors happen
            on real hardware. ``after_tokens`` must then stay ``0``.

    Yields:
        A :class:`FaultRecord` to assert on: ``calls`` counts generations,
        ``tokens`` the real tokens let through, ``fired`` the faults raised.

    """
    if after_tokens is not None and after_tokens < 0:
        raise ValueError(f"after_tokens must be >= 0 or None, got {after_tokens!r}")
    if during_prefill and after_tokens != 0:
        raise ValueError(
            "during_prefill=True raises before the first token; "
            f"after_tokens must stay 0, got {after_tokens!r}"
        )
    if times is not None and times < 0:
        raise ValueError(f"times must be >= 0 or None, got {times!r}")
    scope = _stream_scope()
    real: Callable[..., Iterator[Any]] = scope["generate_step"]
    record = FaultRecord()
    swapped: list[tuple[Any, type]] = []

    def fire() -> None:
        record.fired += 1
        raise exc

    def stepped(steps: Iterator[Any], armed: bool) -> Iterator[Any]:
        produced = 0
        while True:
            if armed and after_tokens is not None and produced == after_tokens:
                fire()
            try:
                item = next(steps)
            except StopIteration:
                break
            produced += 1
            record.tokens += 1
            yield item
        if armed and after_tokens is None:
            fire()

    def generate_step(*args: Any, **kwargs: Any) -> Iterator[Any]:
        record.calls += 1
        armed = times is None or record.fired < times
        if not (during_prefill and armed):
            yield from stepped(real(*args, **kwargs), armed)
            return
        target = _language_model(real, args, kwargs)
        with _armed_prefill(target, fire, swapped):
            yield from stepped(real(*args, **kwargs), armed=False)

    scope["generate_step"] = generate_step
    try:
        yield record
    finally:
        scope["generate_step"] = real
        _restore(swapped)


# --- FaultPlan -----------------------------------------------------------------

Point = int | Literal["prefill", "end"]


@dataclasses.dataclass(frozen=True)
class FaultPlan:
    """One fault as a value: what to raise, where, and on how many generations.

    Why a value: property-based tests (hypothesis) generate plans, print the
    failing one, and shrink it; a plan names its point in one field instead of
    two interacting keywords.

    ``point`` is ``"prefill"`` (inside the model's first forward call), ``k``
    (after k real tokens; ``0`` is before the first token) or ``"end"`` (when
    the real decoder is done). ``times`` as in :func:`plant_fault`.

    Example::

        plan = FaultPlan(MemoryError("transient"), point="prefill", times=1)
        with plan.plant() as fault:
            mlx_vlm.generate(model, processor, prompt, max_tokens=8)
    """

    exception: BaseException | type[BaseException]
    point: Point = 0
    times: int | None = None

    def __post_init__(self) -> None:
        if not _is_exception(self.exception):
            raise TypeError(
                f"exception must be a BaseException, got {self.exception!r}"
            )
        if not (self.point in ("prefill", "end") or _is_count(self.point)):
            raise ValueError(
                f"point must be 'prefill', 'end' or an int >= 0, got {self.point!r}"
            )
        if not (self.times is None or _is_count(self.times)):
            raise ValueError(f"times must be an int >= 0 or None, got {self.times!r}")

    @property
    def tokens_before(self) -> int | None:
        """Real tokens a generation yields before the fault (``None``: all)."""
        if self.point == "prefill":
            return 0
        if self.point == "end":
            return None
        return self.point

    def plant(self) -> contextlib.AbstractContextManager[FaultRecord]:
        """Plant this fault (see :func:`plant_fault`) for a ``with`` block."""
        return plant_fault(
            self.exception,
            after_tokens=self.tokens_before,
            times=self.times,
            during_prefill=self.point == "prefill",
        )


def _is_exception(value: object) -> bool:
    return isinstance(value, BaseException) or (
        isinstance(value, type) and issubclass(value, BaseException)
    )


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# --- empty_stream --------------------------------------------------------------


def _nothing(*args: Any, **kwargs: Any) -> Iterator[Any]:
    """A generator that ends at once; no closure, so its code can be swapped in."""
    yield from ()


@contextlib.contextmanager
def empty_stream() -> Iterator[FaultRecord]:
    """Make the release's own ``stream_generate`` end without yielding anything.

    That is what callers of 0.3.2-0.3.10 saw off Metal whenever an error was
    swallowed. The real function object keeps its identity (so every captured
    reference and every wrapper sees the change); only its code is swapped for
    the duration.
    """
    function = locate(importlib.import_module("mlx_vlm")).stream_generate
    if function is None:
        raise RuntimeError("this mlx-vlm release has no stream_generate")
    record = FaultRecord(fired=1)
    saved = function.__code__
    function.__code__ = _nothing.__code__
    try:
        yield record
    finally:
        function.__code__ = saved
