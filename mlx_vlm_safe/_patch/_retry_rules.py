"""What the retry engine is told about mlx-vlm: its failures and its ladder.

Strictly private. The engine (``_retry``) is generic: it retries memory
errors and never a bad argument, and knows no library. What mlx and mlx-vlm
failures look like, and which keyword makes a generation do less work, lives
here, and reaches the engine on the ``CallSpec`` of the patched
``generate()``/``stream_generate()`` (``_retry_wiring``) and through the
public ``mlx_vlm_safe.retry``, which is the engine's decorator with these
rules and this ladder (a ``@retry`` function usually calls ``generate()``, and
nested retry loops collapse into the outer one, so the outer one must know
mlx-vlm's failures).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from .._retry import Rule, Rules, Verdict

RETRY, NEVER = Verdict.RETRY, Verdict.NEVER

_OFF_METAL = "mlx-vlm 0.1.22-0.3.1 on a non-Metal backend fails on entry"

# fmt: off
#: mlx-vlm's and mlx's failures, read before the engine's generic table.
RULES = Rules(
    defects=(
        Rule(NEVER, (KeyError,), ("max_recommended_working_set_size",), _OFF_METAL),
        Rule(NEVER, (RuntimeError,), ("[metal::device_info]",), _OFF_METAL),
    ),
    table=(
        Rule(RETRY, (RuntimeError,),
             ("[metal::malloc]", "attempting to allocate", "out of memory",
              "[cuda::malloc]", "cudamalloc", "std::bad_alloc"),
             "mlx or CUDA allocation failure raised as RuntimeError"),
        Rule(RETRY, (AttributeError,),
             ("'nonetype' object has no attribute 'token'",
              "'nonetype' object has no attribute 'prompt_tokens'"),
             "empty generation on an unpatched mlx-vlm path (0.1.26-0.5.0)"),
        Rule(NEVER, (NameError,), (),
             "code defect (mlx-vlm's max_tokens=0 UnboundLocalError)"),
        Rule(NEVER, ("PIL:UnidentifiedImageError",), (),
             "missing or unreadable input"),
    ),
)
# fmt: on

#: What the public ``retry`` says it knows (the end of its docstring).
ABOUT = (
    "What it retries and shrinks by default is what the patched generate() "
    "gets: besides MemoryError, the allocation failures mlx and CUDA raise as "
    "RuntimeError (never mlx-vlm's known defects), and each retry lowers "
    "max_tokens (512, then 256) unless the policy sets a ladder."
)

#: The ladder a retry of generate() uses unless the policy sets one: attempt
#: 2 generates at most 512 tokens, attempt 3 at most 256 (never more than the
#: caller asked for; see ``_retry._ladder``).
LADDER: tuple[Mapping[str, int], ...] = (
    MappingProxyType({"max_tokens": 512}),
    MappingProxyType({"max_tokens": 256}),
)
