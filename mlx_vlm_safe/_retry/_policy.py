"""The retry policy: how often to try, how long to wait, what to shrink.

``RetryPolicy`` is a frozen value, so a policy handed to a decorator cannot be
changed under it. The process-wide default lives here, behind a lock: code
sets it with ``configure()``, operators with ``MLX_VLM_SAFE_RETRY_*``
variables (read once, on first use, so importing the library costs nothing).
Users' own tests switch retries to fixed, instant values with
``set_testing()``; a single call opts out with ``retries_disabled()`` (in
``_context``, with the rest of the per-call state).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from types import TracebackType
from typing import TYPE_CHECKING, NamedTuple

from .. import _env
from .._log import log
from . import _settings as V
from ._settings import RetryOn

if TYPE_CHECKING:
    from ._events import RetryHook

__all__ = [
    "RetryOn",
    "RetryPolicy",
    "configure",
    "get_policy",
    "is_testing",
    "policy_from_env",
    "reset_config",
    "set_testing",
]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failed or empty call is retried.

    ``ladder[i]`` is applied to attempt ``i + 2`` (attempt 1 runs exactly as
    called); attempts past the ladder reuse its last step. ``None`` (the
    default) means the target's own ladder, which its caller gives the engine
    (``CallSpec.ladder``); ``()`` means none. Steps accumulate and
    only ever lower a value: the engine uses ``min(value in effect, step)``.
    The wait before attempt ``n + 1`` is ``uniform(0, min(wait_max, wait_base
    * 2 ** (n - 1)))`` ("full jitter", so many processes hit by the same
    memory pressure do not come back at the same instant). No attempt starts,
    and no wait is taken, past ``deadline`` seconds after the first attempt
    began. ``retry_on`` adds exception types or predicates to the built-in
    tables of retryable failures (memory errors; bad arguments never are);
    ``retry_empty`` retries an empty result.
    """

    attempts: int = 3
    ladder: tuple[Mapping[str, int], ...] | None = None
    wait_base: float = 1.0
    wait_max: float = 8.0
    deadline: float | None = 120.0
    retry_on: tuple[RetryOn, ...] = ()
    retry_empty: bool = True
    hooks: tuple[RetryHook, ...] = ()

    def __post_init__(self) -> None:
        for name, check in _CHECKS.items():
            object.__setattr__(self, name, check(name, getattr(self, name)))
        if self.wait_max < self.wait_base:
            raise ValueError(
                f"wait_max ({self.wait_max!r}) must be >= wait_base "
                f"({self.wait_base!r})"
            )


_CHECKS: dict[str, Callable[[str, object], object]] = {
    "attempts": V.checked_attempts,
    "ladder": V.checked_ladder,
    "wait_base": V.checked_wait,
    "wait_max": V.checked_wait,
    "deadline": V.checked_deadline,
    "retry_on": V.checked_retry_on,
    "retry_empty": V.checked_bool,
    "hooks": V.checked_hooks,
}
#: The names ``configure()`` takes for the retry policy.
RETRY_SETTINGS = frozenset(f.name for f in fields(RetryPolicy))

# --- environment -------------------------------------------------------------

ENV_PREFIX = "MLX_VLM_SAFE_RETRY_"


_ENV: dict[str, tuple[str, Callable[[str], object]]] = {
    "ATTEMPTS": ("attempts", V.parse_int),
    "WAIT_BASE": ("wait_base", V.parse_float),
    "WAIT_MAX": ("wait_max", V.parse_float),
    "DEADLINE": ("deadline", V.parse_deadline),
    "LADDER": ("ladder", V.parse_ladder),
}


def _env_check(field: str, parse: Callable[[str], object]) -> Callable[[str], object]:
    def check(raw: str) -> object:
        return _CHECKS[field](field, parse(raw))

    return check


# Bad values are announced when the patch applies, not first at the first
# failure (when the default policy is read): see ``_env.register``.
for _suffix, (_field, _parse) in _ENV.items():
    _env.register(ENV_PREFIX + _suffix, _env_check(_field, _parse))


def policy_from_env(
    environ: Mapping[str, str] | None = None, *, base: RetryPolicy | None = None
) -> RetryPolicy:
    """Build a policy from ``MLX_VLM_SAFE_RETRY_*`` variables over ``base``.

    Raises ``ValueError`` naming the variable and its value when one is bad, so
    an explicit call fails loudly; the implicit first-use path warns instead.
    """
    env = os.environ if environ is None else environ
    changes: dict[str, object] = {}
    used: list[str] = []
    for suffix, (field, parse) in _ENV.items():
        name = ENV_PREFIX + suffix
        raw = env.get(name)
        if raw is None:
            continue
        used.append(f"{name}={raw!r}")
        try:
            changes[field] = _CHECKS[field](field, parse(raw))
        except ValueError as exc:
            raise ValueError(f"{name}={raw!r} is not valid: {exc}") from None
    try:
        return replace(base or RetryPolicy(), **changes)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ValueError(f"{', '.join(used)} do not fit together: {exc}") from None


# --- process-wide configuration ------------------------------------------------


class Testing(NamedTuple):
    """What ``set_testing(True)`` forces on every retry loop."""

    attempts: int
    wait: float


class _Config:
    """The default policy and the testing override, guarded by ``lock``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.policy: RetryPolicy | None = None  # None: read the environment
        self.testing: Testing | None = None


_config = _Config()


def _current_locked() -> RetryPolicy:
    if _config.policy is None:
        try:
            _config.policy = policy_from_env()
        except ValueError as exc:
            log.warning("keeping the default retry policy: %s", exc)
            _env.warn_bad_values()  # to stderr, once: the logger may be silent
            _config.policy = RetryPolicy()
    return _config.policy


def get_policy() -> RetryPolicy:
    """Return the process-wide default policy (reads the environment once)."""
    policy = _config.policy
    if policy is not None:
        return policy
    with _config.lock:
        return _current_locked()


def configure(**changes: object) -> RetryPolicy:
    """Change fields of the process-wide default policy; return the new one.

    Raises:
        TypeError: a name that is not a ``RetryPolicy`` field.
        ValueError: a value that is not valid for its field.

    """
    unknown = sorted(set(changes) - RETRY_SETTINGS)
    if unknown:
        raise TypeError(
            f"unknown retry setting(s): {', '.join(unknown)}; "
            f"known: {', '.join(sorted(RETRY_SETTINGS))}"
        )
    with _config.lock:
        policy = replace(_current_locked(), **changes)  # type: ignore[arg-type]
        _config.policy = policy
        return policy


def reset_config() -> None:
    """Forget ``configure()`` changes; the environment is read again on next use."""
    with _config.lock:
        _config.policy = None


class Overrides:
    """Decorator-level policy changes, applied over the default at call time.

    Applied late so that ``configure()`` still governs the fields a decorator
    did not set; the merged policy is cached per default policy object.
    """

    def __init__(self, changes: Mapping[str, object]) -> None:
        replace(RetryPolicy(), **changes)  # type: ignore[arg-type]  # fail at decoration
        self.changes = dict(changes)
        self._base: RetryPolicy | None = None  # the last default merged over
        self._merged: RetryPolicy | None = None

    def over(self, base: RetryPolicy) -> RetryPolicy:
        """Apply these changes to ``base`` (cached per base object)."""
        if self._base is base and self._merged is not None:
            return self._merged
        try:
            merged = replace(base, **self.changes)  # type: ignore[arg-type]
        except ValueError as exc:  # e.g. configure(wait_max=...) below our wait_base
            log.warning(
                "retry overrides %r do not fit the default policy (%s); "
                "applying them over the built-in defaults",
                self.changes,
                exc,
            )
            merged = replace(RetryPolicy(), **self.changes)  # type: ignore[arg-type]
        self._base, self._merged = base, merged
        return merged


#: What the engine accepts as a policy: explicit, decorator overrides, or the
#: process-wide default (``None``, read at failure time).
PolicyLike = RetryPolicy | Overrides | None


def resolve(policy: RetryPolicy | Overrides | None) -> RetryPolicy:
    """Return the policy in force: explicit, or the default with any overrides."""
    if policy is None:
        return get_policy()
    return policy.over(get_policy()) if isinstance(policy, Overrides) else policy


class _TestingRestore:
    """Returned by ``set_testing``; as a context manager it restores the old mode."""

    def __init__(self, previous: Testing | None) -> None:
        self._previous = previous

    def __enter__(self) -> _TestingRestore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with _config.lock:
            _config.testing = self._previous


def set_testing(
    testing: bool, *, attempts: int = 1, wait: float = 0.0
) -> _TestingRestore:
    """Force every retry loop to ``attempts`` attempts and fixed ``wait`` seconds.

    For users' own test suites: failures surface at once, without sleeping.
    Usable as a plain call or as ``with set_testing(True): ...``.
    """
    if not (V.is_int(attempts) and attempts >= 1):
        raise ValueError(f"attempts must be an int >= 1, got {attempts!r}")
    if not (V.is_real(wait) and wait >= 0):
        raise ValueError(f"wait must be a finite number >= 0, got {wait!r}")
    with _config.lock:
        previous = _config.testing
        _config.testing = Testing(attempts, float(wait)) if testing else None
    return _TestingRestore(previous)


def is_testing() -> bool:
    """Whether ``set_testing(True)`` is in effect."""
    return _config.testing is not None


def testing_override() -> Testing | None:
    """What ``set_testing()`` forces, else ``None`` (engine use)."""
    return _config.testing
