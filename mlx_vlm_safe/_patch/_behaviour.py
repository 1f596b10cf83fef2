"""What the wrappers need to know about the installed release, as one value.

Strictly private. Built by ``_probes.run_probes`` from the probes' verdicts, read
by the wrappers on every call (so it is a frozen value, never looked up again).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from ._results import empty_result, ran_out


@dataclasses.dataclass(frozen=True)
class Behaviour:
    """The result shape, the empty item, and the release's defaults."""

    never_empty: bool
    shape: str
    result_class: type | None
    stats: Mapping[str, object] | None
    empty_item: object
    default_max_tokens: object
    name: str = "mlx_vlm.generate"

    def empty(self) -> object:
        """An empty result of the release's own shape."""
        return empty_result(self.shape, self.result_class, self.stats)

    def zero_tokens(self) -> object:
        """What ``generate(max_tokens=0)`` returns: empty, ended by length."""
        return ran_out(self.empty())
