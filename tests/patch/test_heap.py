"""glibc's mmap threshold under an address-space limit (``_memory._heap``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from mlx_vlm_safe._patch._memory import _heap

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc's allocator"
)

#: Allocate and free blocks the way a growing KV cache does,
#: and print how much address space a freed middle block leaves mapped.
_PROGRAM = textwrap.dedent(
    """
    import ctypes, os, sys
    from mlx_vlm_safe._patch._memory import _heap
    if sys.argv[1] == "fixed":
        assert _heap.map_large_blocks()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    def size():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    mib = 2**20
    libc.free(libc.malloc(2 * mib))  # a mapped block freed: glibc raises its threshold
    blocks = [libc.malloc(2 * mib) for _ in range(8)]
    keep = libc.malloc(mib)  # something above them on the heap
    before = size()
    for block in blocks:
        libc.free(block)
    libc.malloc_trim(0)
    print(before - size())
    """
)


def _returned(mode: str) -> int:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-c", _PROGRAM, mode],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    return int(out.stdout.split()[-1])


def test_freed_large_blocks_give_their_address_space_back_once_fixed() -> None:
    """Without the fix the freed blocks stay mapped; with it they are unmapped."""
    # 16 MiB freed: glibc keeps it mapped, or unmaps (nearly) all of it; the
    # interpreter's own small maps move the figure by a few pages either way.
    assert _returned("dynamic") < 2 * 2**20
    assert _returned("fixed") > 14 * 2**20


def test_the_operators_own_threshold_is_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_heap, "_fixed", [])
    monkeypatch.setenv(_heap.OPERATOR_VARIABLE, "65536")
    assert _heap.map_large_blocks() is False
    assert _heap._fixed == [False]  # decided: not fixed
    monkeypatch.delenv(_heap.OPERATOR_VARIABLE)
    assert _heap.map_large_blocks() is False  # decided once per process
