"""The memory guard: out of memory becomes ``MemoryError``, never a dead process.

Strictly private. ``_budget`` says how much room the process has left (cgroup,
``MemAvailable``, ``RLIMIT_AS``, or a configured limit), ``_estimate`` what a
generation will need (from the loaded model), and ``_guard`` wraps the
release's ``stream_generate`` with the checks before and during generation.
"""

from ._budget import MEMORY_SETTINGS, reset_memory, settings, snapshot, updated, use

__all__ = [
    "MEMORY_SETTINGS",
    "reset_memory",
    "settings",
    "snapshot",
    "updated",
    "use",
]
