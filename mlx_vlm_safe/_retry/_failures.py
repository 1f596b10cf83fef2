"""The failure path: everything that happens after attempt 1 did not succeed.

The happy path (``_engine``, ``_streams``) ends with one successful attempt and never
reaches this module. Here: classify the failure, compute the wait and the next
keyword values, respect the attempt limit and the deadline, tell the hooks and
the log, and on give-up hand the caller its own exception with the history.

A retried attempt's exception is stripped of its traceback (and chained
exceptions) right after the ``on_retry`` hooks: the traceback holds the failed
attempt's frames, the frames hold its arrays, and the next attempt needs that
memory now, not when the cyclic garbage collector gets round to it.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from ._classify import Rules, Verdict, explain
from ._context import CallState
from ._events import (
    NO_CHANGES,
    AttemptRecord,
    RetryDetails,
    log_event,
    notify,
    retry_log,
)
from ._ladder import CallSpec, apply_changes, ladder_changes, ladder_for
from ._policy import PolicyLike, RetryPolicy, resolve, testing_override

__all__ = ["DEFAULT_RUNTIME", "RetryLoop", "Runtime"]


@dataclass(frozen=True, slots=True)
class Runtime:
    """Time and randomness, injectable so property tests run instantly.

    ``time_left``: seconds left of the caller's own time limit (``None``: no
    limit); a wait ending past it is not taken, the loop gives up ("timeout").
    """

    clock: Callable[[], float] = time.perf_counter
    sleep: Callable[[float], object] = time.sleep  # Ctrl-C interrupts it at once
    uniform: Callable[[float, float], float] = random.uniform
    time_left: Callable[[], float | None] | None = None


DEFAULT_RUNTIME = Runtime()


def tokens_of(spec: CallSpec) -> int | None:
    """Tokens the last attempt produced, if the spec can tell."""
    return None if spec.progress is None else tokens_read(spec.progress)


def tokens_read(progress: Callable[[], int | None]) -> int | None:
    """Call a progress reader; a broken one reads as "unknown"."""
    try:
        return progress()
    except Exception:  # bookkeeping must not fail the call
        return None


def is_empty(predicate: Callable[[Any], bool] | None, result: object) -> bool:
    """Apply an emptiness predicate; a broken one counts as "not empty"."""
    if predicate is None:
        return False
    try:
        return bool(predicate(result))
    except Exception:  # a broken predicate must not fail the call
        return predicate_failed()


def predicate_failed() -> bool:
    """Log the emptiness predicate's exception being handled; read "not empty"."""
    retry_log.warning("is_empty predicate raised; result kept", exc_info=True)
    return False


def settled_at_once(
    exc: Exception,
    policy: PolicyLike,
    state: CallState,
    clock: Callable[[], float],
    rules: Rules,
) -> bool:
    """Settle a first-attempt error no retry can fix, without the loop.

    This is the caller's own error (a bad argument, a missing file): it gets
    its history attribute and nothing else, no note, no hook, no log, and the
    caller re-raises it with a bare ``raise`` so the traceback is the one
    without the wrapper plus one frame. Returns False if it may be retried.
    """
    if explain(exc, resolve(policy), rules).verdict is Verdict.RETRY:
        return False
    duration = clock() - state.started
    record = (1, NO_CHANGES, type(exc).__name__, duration, None, 0.0)
    state.records = (AttemptRecord._make(record),)
    state.active = False
    try:  # noqa: SIM105 - contextlib.suppress would double this path's cost
        exc.mlx_vlm_safe_attempts = state.records  # type: ignore[attr-defined]
    except Exception:  # a class may refuse attributes
        pass
    return True


def backoff(policy: RetryPolicy, failed_attempt: int, rt: Runtime) -> float:
    """Full jitter: ``uniform(0, min(wait_max, wait_base * 2 ** (n - 1)))``."""
    cap = min(policy.wait_max, policy.wait_base * 2.0 ** min(failed_attempt - 1, 1000))
    return rt.uniform(0.0, cap) if cap > 0 else 0.0


class Action(enum.Enum):
    """What the loop does after an attempt that did not succeed."""

    RETRY = "retry"
    KEEP = "keep"  # an empty result, with retry_empty off: return it as is
    GIVE_UP = "give_up"


class Decision(NamedTuple):
    """The loop's next step; ``reason`` is the give-up reason hooks receive."""

    action: Action
    reason: str = ""
    why: str = ""
    wait: float = 0.0


class RetryLoop:
    """The failure path of one call; built only after attempt 1 did not succeed.

    ``attempt(args, kwargs)`` runs one attempt; ``empty`` says whether its
    result counts as empty. For a ``stream``, an attempt's tokens are the items
    it produced (0, or 1 for the first one) unless the spec reads progress.
    """

    def __init__(
        self,
        attempt: Callable[[tuple[Any, ...], dict[str, Any]], Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        *,
        spec: CallSpec,
        empty: Callable[[Any], bool] | None,
        policy: PolicyLike,
        state: CallState,
        rt: Runtime,
        stream: bool = False,
    ) -> None:
        self.policy = resolve(policy)
        forced = testing_override()  # set_testing() beats every policy
        self.limit = forced.attempts if forced else self.policy.attempts
        self.fixed_wait = forced.wait if forced else None
        self.attempt, self.args, self.kwargs = attempt, args, kwargs
        self.spec, self.empty, self.state, self.rt = spec, empty, state, rt
        self.ladder = ladder_for(self.policy.ladder, spec)
        self.stream = stream
        self.records: list[AttemptRecord] = []

    def run(self, outcome: Any, failed: bool) -> Any:
        """Continue after attempt 1 raised ``outcome`` or returned it empty.

        Returns the first non-empty result, or the last empty one; raises the
        last exception. Call it outside any ``except`` block, so that a later
        exception does not chain to (and keep alive) an earlier one.
        """
        state, clock = self.state, self.rt.clock
        duration = state.ended - state.started
        error_type = type(outcome).__name__ if failed else None
        self._record(1, NO_CHANGES, error_type, ok=False, duration=duration)
        number = 1
        try:
            while True:
                elapsed = clock() - state.started
                decision = self._decide(number, outcome, failed, elapsed)
                if decision.action is Action.KEEP:
                    return outcome
                if decision.action is Action.GIVE_UP:
                    return self._give_up(
                        outcome, failed, decision.reason, decision.why, elapsed
                    )
                wait = decision.wait
                changes = ladder_changes(
                    self.ladder, number + 1, self.spec, self.args, self.kwargs
                )
                error = outcome if failed else None
                self._tell(
                    "retry", number, error, wait=wait, changes=changes, elapsed=elapsed
                )
                if error is not None:
                    _release(error)
                outcome = error = None
                if wait > 0:
                    self.rt.sleep(wait)
                number += 1
                outcome, failed, ok = self._run_attempt(number, changes, wait)
                if ok:
                    elapsed = clock() - state.started
                    self._tell(
                        "recovered", number, None, changes=changes, elapsed=elapsed
                    )
                    return outcome
        finally:
            state.records, state.active = tuple(self.records), False

    def _decide(
        self, number: int, outcome: Any, failed: bool, elapsed: float
    ) -> Decision:
        """Whether attempt ``number``'s outcome is retried, kept, or the end."""
        policy = self.policy
        if failed:
            verdict, why = explain(outcome, policy, self.spec.rules)
            if verdict is Verdict.NEVER:
                return Decision(Action.GIVE_UP, "not-retryable", why)
        elif not policy.retry_empty:
            return Decision(Action.KEEP)
        else:
            why = "empty result"
        if number >= self.limit:
            return Decision(Action.GIVE_UP, "attempts", why)
        wait = self.fixed_wait
        if wait is None:
            wait = backoff(policy, number, self.rt)
        if policy.deadline is not None and elapsed + wait > policy.deadline:
            return Decision(Action.GIVE_UP, "deadline", why)
        left = self.rt.time_left() if self.rt.time_left else None
        if left is not None and wait >= left:
            return Decision(Action.GIVE_UP, "timeout", why)
        return Decision(Action.RETRY, "retry", why, wait)

    def _run_attempt(
        self, number: int, changes: Mapping[str, object], waited: float
    ) -> tuple[Any, bool, bool]:
        """Run attempt ``number``; return ``(outcome, failed, ok)``."""
        args, kwargs = apply_changes(self.spec, self.args, self.kwargs, changes)
        clock = self.rt.clock
        started = clock()
        try:
            outcome, failed = self.attempt(args, kwargs), False
        except Exception as exc:  # classified by the caller
            outcome, failed = exc, True
        except BaseException as exc:  # e.g. Ctrl-C: record it, never retry it
            duration = clock() - started
            interrupted_by = type(exc).__name__
            self._record(
                number,
                changes,
                interrupted_by,
                ok=False,
                duration=duration,
                waited=waited,
            )
            raise
        self.state.ended = clock()
        ok = not failed and not is_empty(self.empty, outcome)
        duration = self.state.ended - started
        error_type = type(outcome).__name__ if failed else None
        self._record(
            number, changes, error_type, ok=ok, duration=duration, waited=waited
        )
        return outcome, failed, ok

    def _record(
        self,
        number: int,
        changes: Mapping[str, object],
        error: str | None,
        *,
        ok: bool,
        duration: float,
        waited: float = 0.0,
    ) -> None:
        if self.stream and self.spec.progress is None:
            tokens: int | None = int(ok)
        else:
            tokens = tokens_of(self.spec)
        self.records.append(
            AttemptRecord(number, changes, error, duration, tokens, waited)
        )

    def _tell(
        self,
        event: str,
        number: int,
        error: Exception | None,
        *,
        elapsed: float,
        wait: float = 0.0,
        changes: Mapping[str, object] = NO_CHANGES,
        reason: str = "retry",
    ) -> None:
        """Log the event and run the hooks; never with call arguments."""
        name = self.spec.name
        details = RetryDetails(name, number, error, wait, changes, elapsed, reason)
        what = f"raised {type(error).__name__}" if error else "returned empty"
        where = f"{name}: attempt {number}/{self.limit}"
        if event == "recovered":
            log_event(logging.INFO, event, details, f"{where} succeeded")
            return
        if event == "retry":
            with_ = ", ".join(f"{k}={v!r}" for k, v in changes.items())
            message = f"{where} {what}; retrying in {wait:.2f} s"
            message += f" with {with_}" if with_ else ""
            log_event(logging.WARNING, event, details, message)
            notify(self.policy.hooks, "on_retry", details)
        else:
            message = f"{where} {what}; giving up ({reason})"
            log_event(logging.WARNING, event, details, message)
            notify(self.policy.hooks, "on_give_up", details)

    def _give_up(
        self, outcome: Any, failed: bool, reason: str, why: str, elapsed: float
    ) -> Any:
        """Return the last empty result, or raise the last exception, with history."""
        history = tuple(self.records)
        number = len(history)
        engaged = number > 1 or reason != "not-retryable"
        if failed:
            # Best effort: an exception class may refuse attributes, and the
            # caller must get its own exception whatever happens here.
            with contextlib.suppress(Exception):
                outcome.mlx_vlm_safe_attempts = history
            if engaged and hasattr(outcome, "add_note"):  # Python >= 3.11
                lines = [r.describe(self.limit) for r in history]
                lines.append(f"mlx_vlm_safe: gave up ({reason}: {why})")
                with contextlib.suppress(Exception):
                    for line in lines:
                        outcome.add_note(line)
        if engaged:
            error = outcome if failed else None
            self._tell("give_up", number, error, elapsed=elapsed, reason=reason)
        if failed:
            raise outcome
        return outcome


def _release(error: BaseException) -> None:
    """Drop what a discarded exception keeps alive (see the module docstring)."""
    error.with_traceback(None)
    with contextlib.suppress(Exception):  # a class may refuse attribute writes
        error.__context__ = error.__cause__ = None
