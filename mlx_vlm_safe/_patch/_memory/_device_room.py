"""The room on a discrete GPU: where a generation's memory really goes there.

Strictly private. On the CPU and on Apple's unified memory, mlx allocates
from the process's own memory, and ``_budget``'s system figures (cgroup,
``MemAvailable``, ``RLIMIT_AS``) are the room. On CUDA the KV cache and the
activations live on the device: host figures say nothing about them
(measured on an H200: the host said 120.9 GB of room with 4 GB free on the
GPU). There the room is the tighter of

* ``gpu_free``: the device's free memory (mlx's ``device_info()``, which
  asks NVML, so other processes' use counts), and
* ``mlx_limit``: mlx's memory limit less what mlx holds now (past it mlx
  raises ``RuntimeError ... out of memory``).

mlx's cache of freed buffers counts as used in both, as on the host: the
guard gives it back before refusing.
"""

from __future__ import annotations

from .. import _mlx

__all__ = ["CUDA_ALLOWANCE", "CUDA_EXTRA", "device_room", "with_allowance"]

#: On CUDA mlx's peak runs over the estimate (buffers of the steps still in
#: flight on the device, cuBLAS workspaces). Measured on an H200, mlx-cuda
#: 0.32.4 (tools/measure_gpu_memory.py): a part that grows with the cache
#: (heavy-KV checkpoint, 1000 tokens: 99 MiB estimated, 115-123 MiB peak) and
#: a part that does not (tiny checkpoint, 8 tokens: 0.16 MB estimated, 1.5 MB
#: peak; wide, 8 tokens: 6.4 MB estimated, 13.8 MB peak). A reservation there
#: is the estimate times ``CUDA_ALLOWANCE`` plus ``CUDA_EXTRA``. For models
#: larger than those, the budget's margin (32 MiB + 5 % of the room) is what
#: absorbs larger workspaces.
CUDA_ALLOWANCE = 1.25
CUDA_EXTRA = 16 * 2**20


def _info() -> dict[str, object]:
    mx = _mlx.core()
    for owner in (mx, getattr(mx, "cuda", None)):
        get = getattr(owner, "device_info", None)
        if callable(get):
            try:
                info = get()
            except Exception:  # an old or odd backend: no figures
                continue
            if isinstance(info, dict):
                return info
    return {}


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def with_allowance(estimate: int) -> int:
    """The memory a generation estimated at ``estimate`` bytes peaks at here.

    The estimate itself on the CPU and on Metal (its tolerance there is
    measured by ``tests/patch/test_memory.py``); more on CUDA (see above).
    """
    if _mlx.device() != "cuda":
        return estimate
    return int(estimate * CUDA_ALLOWANCE) + CUDA_EXTRA


def device_room() -> dict[str, int] | None:
    """Room per device source (bytes), or None where memory is the host's."""
    if _mlx.device() != "cuda":
        return None
    rooms: dict[str, int] = {}
    free = _int(_info().get("free_memory"))
    if free is not None:
        rooms["gpu_free"] = free
    mx = _mlx.core()
    try:
        limit = int(mx.get_memory_limit())  # type: ignore[union-attr]
        active = int(mx.get_active_memory())  # type: ignore[union-attr]
    except Exception:  # an mlx without these: the device figure alone
        limit = active = 0
    if limit > 0:
        rooms["mlx_limit"] = limit - active
    return rooms or None
