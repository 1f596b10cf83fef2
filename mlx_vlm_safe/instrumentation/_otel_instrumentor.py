"""``opentelemetry-instrument python app.py``: the patch and its telemetry.

Strictly private; named by the ``opentelemetry_instrumentor`` entry point in
``pyproject.toml``, which ``opentelemetry-instrument`` (and
``opentelemetry.instrumentation.auto_instrumentation``) load at start-up,
after configuring the SDK's providers. Imports ``opentelemetry-instrumentation``
at module level, so it is only ever imported by that tool.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)

__all__ = ["MlxVlmSafeInstrumentor"]


class MlxVlmSafeInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Activate the patch (now, or when mlx_vlm is imported) and emit OTel data."""

    def instrumentation_dependencies(self) -> Collection[str]:
        # None: a fork that provides ``mlx_vlm`` has no "mlx-vlm" metadata,
        # and the patch itself judges the code it finds, not its version.
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        import mlx_vlm_safe  # noqa: F401 - the import arms the patch

        from . import enable_otel

        enable_otel(
            tracer_provider=kwargs.get("tracer_provider"),
            meter_provider=kwargs.get("meter_provider"),
        )

    def _uninstrument(self, **kwargs: Any) -> None:
        from . import disable_otel

        disable_otel()
