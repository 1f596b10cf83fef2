"""The memory guard: out of memory becomes ``MemoryError``, never a dead process.

Strictly private. ``_budget`` says how much room the process has left (cgroup,
``MemAvailable``, ``RLIMIT_AS``, or a configured limit), ``_estimate`` what a
generation will need (from the loaded model), and ``_guard`` wraps the
release's ``stream_generate`` with the checks before and during generation.
"""

from ._budget import MEMORY_SETTINGS, reset_memory, settings, updated, use
from ._budget import snapshot as _budget_snapshot
from ._ledger import ledger


def snapshot() -> dict[str, object]:
    """The settings, the budget a generation would get now, and the ledger."""
    shown = _budget_snapshot()
    current = settings()
    books = ledger.snapshot()
    shown["wait"] = current.wait
    shown["shorten"] = current.shorten
    shown["ledger"] = books
    if shown["guard"] == "on":
        shown["summary"] = f"{shown['summary']}; {describe_ledger(books)}"
    return shown


def describe_ledger(books: dict[str, int]) -> str:
    """One line on the ledger: reserved, in flight, waiting, and counts."""
    return (
        f"ledger: {books['in_flight']} in flight reserving "
        f"{books['reserved'] / 2**20:.1f} MiB, {books['waiting']} waiting; "
        f"{books['admitted']} admitted, {books['waited']} waited, "
        f"{books['refused']} refused"
    )


__all__ = [
    "MEMORY_SETTINGS",
    "describe_ledger",
    "ledger",
    "reset_memory",
    "settings",
    "snapshot",
    "updated",
    "use",
]
