"""glibc's heap: give freed memory back to the system, where it counts.

Strictly private. Under ``RLIMIT_AS`` what counts is the address space
mapped, not the memory in use, and glibc keeps freed memory mapped in two
ways:

* Freed heap sits in its arenas until ``malloc_trim(0)`` returns it
  (:func:`trim_heap`; the guard calls it before it refuses a call).
* Its *dynamic* mmap threshold: a large block (128 KiB and up, at first) is
  mapped on its own and unmapped when freed, but each such free raises the
  threshold to that block's size (up to 32 MiB), so the next blocks of that
  size come from the heap instead. A KV cache frees and allocates buffers of
  one or two MiB per layer as it grows: after the first growth they are
  heap blocks, and once freed, the ones below the heap's top stay mapped
  (``malloc_trim`` can return their pages, not their addresses). Measured
  on mlx-vlm 0.3.5, 4 workers x 1,000 tokens under ``RLIMIT_AS`` = in use
  + 110 MiB: one call alone grew the address space by 57 MiB at 1,024
  positions against the 42 MiB its KV cache and previous capacity account
  for; 3 of 4 concurrent runs came back with calls shortened by an
  in-flight refusal, and the call alone afterwards too. With the threshold
  fixed at glibc's default (:func:`map_large_blocks`), every call whole.

So once the guard finds the process under an address-space limit it fixes
the threshold, unless the operator chose one (``MALLOC_MMAP_THRESHOLD_``).
Large blocks then cost an ``mmap`` / ``munmap`` each; mlx keeps its own
cache of freed buffers, so that is rare on the generation path. Nothing is
changed in a process without such a limit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable

__all__ = ["map_large_blocks", "trim_heap"]

#: ``mallopt``'s parameter number for the mmap threshold (``malloc.h``).
M_MMAP_THRESHOLD = -3
#: glibc's own starting threshold: blocks this size and up get their own map.
THRESHOLD = 128 * 1024
#: The environment variable with which an operator sets it themselves.
OPERATOR_VARIABLE = "MALLOC_MMAP_THRESHOLD_"

_libc: list[ctypes.CDLL | None] = []
_lock = threading.Lock()
_fixed: list[bool] = []  # [done] once map_large_blocks has decided


def _glibc() -> ctypes.CDLL | None:
    if not _libc:
        try:
            libc: ctypes.CDLL | None = ctypes.CDLL(
                ctypes.util.find_library("c") or "libc.so.6"
            )
        except OSError:
            libc = None
        _libc.append(libc)
    return _libc[0]


def _function(name: str) -> Callable[..., int] | None:
    libc = _glibc()
    fn = getattr(libc, name, None) if libc is not None else None
    return fn if callable(fn) else None


def trim_heap() -> bool:
    """Return glibc's freed heap to the system (``malloc_trim(0)``), if glibc."""
    trim = _function("malloc_trim")
    if trim is None:
        return False
    try:
        return bool(trim(0))
    except Exception:  # not glibc after all, or a sandbox refusing it
        return False


def map_large_blocks() -> bool:
    """Fix glibc's mmap threshold at its default, once (see the module docstring).

    Returns whether the threshold is fixed now (by this call or an earlier
    one). Leaves it alone where the operator set ``MALLOC_MMAP_THRESHOLD_``
    or the C library is not glibc.
    """
    if _fixed:
        return _fixed[0]
    with _lock:
        if not _fixed:
            done = False
            mallopt = _function("mallopt")
            if mallopt is not None and OPERATOR_VARIABLE not in os.environ:
                try:
                    done = bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD))
                except Exception:  # a sandbox refusing it: leave it be
                    done = False
            _fixed.append(done)
    return _fixed[0]
