"""How much memory this process may still use: the memory guard's budget.

Strictly private. On Linux an allocation the system refuses does not raise
in mlx: the process dies (SIGSEGV under ``RLIMIT_AS``, SIGKILL from the OOM
killer at a cgroup limit). The guard therefore asks, before and during a
generation, how much room is left, from every source that can end the
process, and keeps the tightest:

* the cgroup limit minus the cgroup's usage (v2 ``memory.max`` /
  ``memory.current``, v1 ``memory.limit_in_bytes`` / ``memory.usage_in_bytes``);
* ``MemAvailable`` of ``/proc/meminfo``;
* the soft ``RLIMIT_AS`` minus the address space in use (``/proc/self/statm``).

Less a safety margin (``margin``: ``MARGIN_FIXED`` plus ``MARGIN_FRACTION`` of
that room unless configured). The settings: ``configure(memory_limit=...,
memory_margin=...)`` or ``MLX_VLM_SAFE_MEMORY_LIMIT`` / ``..._MARGIN``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import resource
import threading
import time
from collections.abc import Mapping
from typing import NamedTuple

from ._device_room import device_room

__all__ = [  # noqa: RUF022 - grouped: settings, then the budget
    "MEMORY_SETTINGS", "Settings", "parse_size", "reset_memory", "settings",
    "updated", "use", "Budget", "read_budget",
]  # fmt: skip

LIMIT_VARIABLE = "MLX_VLM_SAFE_MEMORY_LIMIT"
MARGIN_VARIABLE = "MLX_VLM_SAFE_MEMORY_MARGIN"
WAIT_VARIABLE = "MLX_VLM_SAFE_MEMORY_WAIT"
SHORTEN_VARIABLE = "MLX_VLM_SAFE_MEMORY_SHORTEN"
MARGIN_FIXED = 32 * 2**20
MARGIN_FRACTION = 0.05
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "kib": 2**10,
    "m": 10**6, "mb": 10**6, "mib": 2**20,
    "g": 10**9, "gb": 10**9, "gib": 2**30,
    "t": 10**12, "tb": 10**12, "tib": 2**40,
}  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$")


def parse_size(value: object, name: str = "memory_limit") -> int | str | None:
    """``None``/``"auto"`` -> None, ``"off"`` -> "off", else bytes (``"512MB"``)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(
            f"{name} must be bytes, a size such as '512MB', 'auto' or 'off'"
        )
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"{name} must be > 0 bytes, got {value!r}")
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("auto", ""):
            return None
        if text in ("off", "none", "0", "false", "no"):
            return "off"
        match = _SIZE.match(text)
        if match and match.group(2) in _UNITS:
            size = int(float(match.group(1)) * _UNITS[match.group(2)])
            if size > 0:
                return size
    raise ValueError(
        f"{name} must be bytes, a size such as '512MB', 'auto' or 'off', got {value!r}"
    )


def parse_wait(value: object, name: str = "memory_wait") -> float | None:
    """Seconds a call may wait for memory (``None``/``"auto"``: the default).

    ``0`` never waits; the default is the retry policy's deadline.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "auto"):
            return None
        try:
            value = float(text)
        except ValueError:
            raise ValueError(
                f"{name} must be seconds >= 0 or 'auto', got {value!r}"
            ) from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be seconds >= 0 or 'auto', got {value!r}")
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{name} must be seconds >= 0 or 'auto', got {value!r}")
    return float(value)


def parse_switch(value: object, name: str = "memory_shorten") -> bool:
    """A boolean setting: ``True``/``False``, or ``1/0``, ``yes/no``, ``on/off``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Settings:
    """The memory guard's settings.

    ``limit``: None (the system's sources), "off", or what every generation
    in flight may take together (bytes). ``wait``: how long a call waits for
    memory (None: the retry policy's deadline; 0: never). ``shorten``: a call
    that can never fit may be retried with a smaller ``max_tokens`` (the
    retry ladder; the answer is marked shortened); False makes it raise
    ``MemoryError`` instead.
    """

    limit: int | str | None = None
    margin: int | None = None  # None: MARGIN_FIXED + MARGIN_FRACTION of the room
    wait: float | None = None
    shorten: bool = True


class _Config:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.settings: Settings | None = None


_config = _Config()


def _from_env(environ: Mapping[str, str]) -> Settings:
    limit = parse_size(environ.get(LIMIT_VARIABLE), LIMIT_VARIABLE)
    raw_margin = environ.get(MARGIN_VARIABLE)
    margin = parse_size(raw_margin, MARGIN_VARIABLE) if raw_margin else None
    if margin == "off":
        margin = 0
    wait = parse_wait(environ.get(WAIT_VARIABLE), WAIT_VARIABLE)
    raw_shorten = environ.get(SHORTEN_VARIABLE)
    shorten = (
        True if raw_shorten is None else parse_switch(raw_shorten, SHORTEN_VARIABLE)
    )
    return Settings(limit, margin if isinstance(margin, int) else None, wait, shorten)


def settings() -> Settings:
    """The settings in force (the environment is read once, on first use)."""
    current = _config.settings
    if current is not None:
        return current
    with _config.lock:
        if _config.settings is None:
            try:
                _config.settings = _from_env(os.environ)
            except ValueError as exc:
                import logging

                logging.getLogger("mlx_vlm_safe").warning(
                    "memory guard: ignoring a bad setting (%s)", exc
                )
                _config.settings = Settings()
        return _config.settings


MEMORY_SETTINGS = frozenset(
    {"memory_limit", "memory_margin", "memory_wait", "memory_shorten"}
)


def updated(changes: Mapping[str, object]) -> Settings:
    """The settings in force with ``memory_limit`` / ``memory_margin`` changed.

    Raises:
        ValueError: a value that is not a size, ``"auto"`` or ``"off"``.

    """
    current = settings()
    limit, margin = current.limit, current.margin
    wait, shorten = current.wait, current.shorten
    if "memory_wait" in changes:
        wait = parse_wait(changes["memory_wait"])
    if "memory_shorten" in changes:
        shorten = parse_switch(changes["memory_shorten"])
    if "memory_limit" in changes:
        limit = parse_size(changes["memory_limit"])
    if "memory_margin" in changes:
        raw = changes["memory_margin"]
        if raw is None:
            margin = None
        elif isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
            margin = raw
        else:
            parsed = parse_size(raw, "memory_margin")
            margin = (
                0 if parsed == "off" else parsed if isinstance(parsed, int) else None
            )
    return Settings(limit, margin, wait, shorten)


def use(new: Settings) -> None:
    """Make ``new`` the settings in force (see :func:`updated`)."""
    with _config.lock:
        _config.settings = new


def reset_memory() -> None:
    """Forget configured memory settings; read the environment again."""
    with _config.lock:
        _config.settings = None


@dataclasses.dataclass(frozen=True)
class Budget:
    """Room left (bytes, after the margin) and where the tightest figure came from.

    ``room`` is None when no source applies (not Linux, nothing set).
    ``sources`` maps each source to its room before the margin.
    """

    room: int | None
    source: str | None
    sources: Mapping[str, int]
    margin: int


def _read(path: str, size: int) -> bytes:
    """The first ``size`` bytes of a small file (``os.read``: cheaper than ``open``)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def _read_int(path: str) -> int | None:
    try:
        text = _read(path, 64).strip()
    except OSError:
        return None
    if not text or text == b"max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


_cgroup_dir: list[str | None] = []  # resolved once per process


def _cgroup_paths() -> tuple[str, str] | None:
    """``(limit file, usage file)`` of this process's cgroup, if any."""
    if not _cgroup_dir:
        found: str | None = None
        try:
            with open("/proc/self/cgroup", encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError:
            lines = []
        for line in lines:
            if found is not None or line.count(":") < 2:
                break
            _, controllers, path = line.split(":", 2)
            if controllers == "":  # v2
                base = "/sys/fs/cgroup" + path.rstrip("/")
                if os.path.exists(base + "/memory.max"):
                    found = f"v2:{base}"
                    break
            elif "memory" in controllers.split(","):
                for base in ("/sys/fs/cgroup/memory" + path, "/sys/fs/cgroup/memory"):
                    if os.path.exists(base.rstrip("/") + "/memory.limit_in_bytes"):
                        found = f"v1:{base.rstrip('/')}"
                        break
        _cgroup_dir.append(found)
    found = _cgroup_dir[0]
    if found is None:
        return None
    kind, base = found.split(":", 1)
    if kind == "v2":
        return base + "/memory.max", base + "/memory.current"
    return base + "/memory.limit_in_bytes", base + "/memory.usage_in_bytes"


def _meminfo_available() -> int | None:
    try:
        for line in _read("/proc/meminfo", 512).splitlines():
            if line.startswith(b"MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class AddressSpace(NamedTuple):
    """The virtual size and resident set of this process, in bytes."""

    size: int
    resident: int


def address_space() -> AddressSpace | None:
    """``(size, resident)`` of this process in bytes (``/proc/self/statm``)."""
    try:
        fields = _read("/proc/self/statm", 128).split()
        return AddressSpace(int(fields[0]) * _PAGE, int(fields[1]) * _PAGE)
    except (OSError, ValueError, IndexError):
        return None


#: The cgroup limit changes rarely: read it at most once a second.
_limit_read: list[tuple[float, int | None]] = []


def _cgroup_limit(path: str) -> int | None:
    now = time.monotonic()
    if _limit_read and now - _limit_read[0][0] < 1.0:
        return _limit_read[0][1]
    limit = _read_int(path)
    _limit_read[:] = [(now, limit)]
    return limit


def system_room() -> dict[str, int]:
    """Room left per source, before any margin (Linux; empty elsewhere)."""
    rooms: dict[str, int] = {}
    paths = _cgroup_paths()
    if paths is not None:
        limit = _cgroup_limit(paths[0])
        # v1 reports "no limit" as a huge number: ignore anything past 2**60.
        if limit is not None and limit < 2**60:
            usage = _read_int(paths[1])
            if usage is not None:
                rooms["cgroup"] = limit - usage
    available = _meminfo_available()
    if available is not None:
        rooms["MemAvailable"] = available
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft != resource.RLIM_INFINITY:
        space = address_space()
        if space is not None:
            rooms["RLIMIT_AS"] = soft - space.size
    return rooms


def read_budget(current: Settings | None = None) -> Budget | None:
    """The budget now, or None when the guard is off."""
    current = current or settings()
    if current.limit == "off":
        return None
    # On a discrete GPU the device is the room; elsewhere the process's own.
    rooms = device_room() or system_room()
    if isinstance(current.limit, int):
        rooms["memory_limit"] = current.limit
    if not rooms:
        return Budget(None, None, rooms, 0)
    source = min(rooms, key=rooms.__getitem__)
    tightest = rooms[source]
    if current.margin is not None:
        margin = current.margin
    elif source == "memory_limit":
        margin = 0  # the operator's own figure already is the budget
    else:
        margin = MARGIN_FIXED + int(MARGIN_FRACTION * max(tightest, 0))
    return Budget(max(tightest - margin, 0), source, rooms, margin)


def snapshot() -> dict[str, object]:
    """The settings and the budget a generation would get now (for doctor)."""
    budget = read_budget(settings())
    return {
        "limit_variable": os.environ.get(LIMIT_VARIABLE),
        "guard": "off" if budget is None else "on",
        "budget": None if budget is None else budget.room,
        "source": None if budget is None else budget.source,
        "sources": {} if budget is None else dict(budget.sources),
        "margin": None if budget is None else budget.margin,
        "summary": describe(budget),
    }


def describe(budget: Budget | None) -> str:
    """One line for doctor and report()."""
    if budget is None:
        return "off"
    if budget.room is None:
        return "no budget source on this system (set memory_limit to enable)"
    parts = ", ".join(f"{k} {mib(v)}" for k, v in budget.sources.items())
    return (
        f"{mib(budget.room)} after a {mib(budget.margin)} margin "
        f"(tightest: {budget.source}; {parts})"
    )


def mib(value: int) -> str:
    """Bytes as MiB, for messages."""
    return f"{value / 2**20:.1f} MiB"
