"""What the pytest plugin's fixtures hand out: the tiny model and fault stacks.

The fixtures themselves are in ``_mlx_vlm_safe_pytest`` (a top-level module,
see ``mlx_vlm_safe/_bootstrap``), which pytest loads in every session; this
module is imported only when a test uses one of them.

Example (a user's test; no imports of mlx-vlm needed)::

    def test_my_service_reports_out_of_memory(
        mlx_vlm_safe_tiny_model, mlx_vlm_safe_faults, mlx_vlm_safe_testing
    ):
        mlx_vlm_safe_faults.plant(MemoryError("oom"), during_prefill=True)
        with pytest.raises(MemoryError):
            mlx_vlm_safe_tiny_model.generate(max_tokens=8)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._faults import FaultPlan, FaultRecord

__all__ = ["Faults", "TinyModel", "load_tiny_model"]


class TinyModel:
    """The loaded tiny model, with what a real call needs.

    ``generate()`` and ``stream()`` call whatever ``mlx_vlm.generate`` /
    ``mlx_vlm.stream_generate`` are at call time (patched or not), with the
    tiny prompt and image and ``max_tokens=8`` unless told otherwise. Greedy
    decoding on it never stops early: every call gives exactly ``max_tokens``.
    """

    def __init__(
        self, model: Any, processor: Any, prompt: str, image: str, path: str
    ) -> None:
        self.model, self.processor = model, processor
        self.prompt, self.image, self.path = prompt, image, path

    def __repr__(self) -> str:
        # Never the processor's repr: some releases' processors raise in it.
        return f"TinyModel({self.path!r})"

    def _kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs.setdefault("image", [self.image])
        kwargs.setdefault("max_tokens", 8)
        return kwargs

    def generate(self, prompt: str | None = None, **kwargs: Any) -> Any:
        """``mlx_vlm.generate`` on the tiny model (``verbose=False`` by default)."""
        import mlx_vlm

        kwargs.setdefault("verbose", False)
        return mlx_vlm.generate(
            self.model, self.processor, prompt or self.prompt, **self._kwargs(kwargs)
        )

    def stream(self, prompt: str | None = None, **kwargs: Any) -> Iterator[Any]:
        """``mlx_vlm.stream_generate`` on the tiny model."""
        import mlx_vlm

        stream: Iterator[Any] = mlx_vlm.stream_generate(
            self.model, self.processor, prompt or self.prompt, **self._kwargs(kwargs)
        )
        return stream


class Faults:
    """Faults planted for the rest of one test, all removed at its end.

    The fixture form of :func:`~mlx_vlm_safe.testing.plant_fault`: no ``with``
    block, so a fault can be planted in a test's set-up and hit code deep in
    the application under test.
    """

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self._stack = stack

    def plant(
        self,
        exc: BaseException | type[BaseException],
        *,
        after_tokens: int | None = 0,
        times: int | None = None,
        during_prefill: bool = False,
    ) -> FaultRecord:
        """Plant a fault (arguments as for ``plant_fault``); return its record."""
        from ._faults import plant_fault

        return self._stack.enter_context(
            plant_fault(
                exc,
                after_tokens=after_tokens,
                times=times,
                during_prefill=during_prefill,
            )
        )

    def plan(self, plan: FaultPlan) -> FaultRecord:
        """Plant a :class:`~mlx_vlm_safe.testing.FaultPlan`; return its record."""
        return self._stack.enter_context(plan.plant())

    def empty_stream(self) -> FaultRecord:
        """Make ``stream_generate`` end with nothing for the rest of the test."""
        from ._faults import empty_stream

        return self._stack.enter_context(empty_stream())

    def clear(self) -> None:
        """Remove every fault planted so far (the newest first)."""
        self._stack.close()


def load_tiny_model(root: Path) -> TinyModel:
    """Build the tiny checkpoint under ``root`` and load it with ``mlx_vlm.load()``."""
    import mlx_vlm

    from ._checkpoint import build_tiny_checkpoint, tiny_image_path, tiny_prompt

    path = build_tiny_checkpoint(root / "checkpoint")
    model, processor = mlx_vlm.load(str(path))
    prompt = tiny_prompt(processor, model.config, "Describe the picture.")
    return TinyModel(model, processor, prompt, str(tiny_image_path(root)), str(path))
