"""No exported metric, span, event, log line or stat holds the caller's data.

A property test: marker strings in the prompt, in the image's path and in an
exception's message (a message can quote the input), real calls on the tiny
checkpoint, and then every backend's output is searched for the markers and
for the answers' text.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import shutil
import string
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mlx_vlm_safe
from mlx_vlm_safe._call_record import subscribe
from mlx_vlm_safe.instrumentation import _prometheus
from mlx_vlm_safe.testing import plant_fault

from ..conftest import Tiny
from .conftest import Otel

pytestmark = pytest.mark.model

markers = st.text(string.ascii_letters, min_size=10, max_size=16).map(
    lambda s: "MARK" + s
)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        self.lines.append(repr(sorted(record.__dict__.items())))


@pytest.fixture
def exported(otel: Otel) -> Iterator[Any]:
    """Everything the backends export, as one text to search."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    metrics = _prometheus.Metrics(registry)
    unsubscribe = subscribe(metrics.observe)
    lines = _Lines()
    logger = logging.getLogger("mlx_vlm_safe")
    logger.addHandler(lines)

    def text() -> str:
        spans = [
            (
                s.name,
                dict(s.attributes),
                s.status.description,
                [(e.name, dict(e.attributes)) for e in s.events],
            )
            for s in otel.spans.get_finished_spans()
        ]
        points = otel.reader.get_metrics_data().to_json()
        return "\n".join(
            [
                repr(spans),
                points,
                generate_latest(registry).decode(),
                *lines.lines,
                repr(dataclasses.asdict(mlx_vlm_safe.stats())),
            ]
        )

    yield text
    logger.removeHandler(lines)
    unsubscribe()


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(marker=markers, fail_after=st.integers(0, 3))
def test_no_prompt_image_path_message_or_answer_is_exported(  # noqa: PLR0917 - fixtures
    tiny: Tiny, mlx_vlm: Any, exports: Any, exported: Any, marker: str, fail_after: int
) -> None:
    folder = pathlib.Path(tempfile.mkdtemp(prefix=f"{marker}-dir-"))
    try:
        image = folder / f"{marker}.png"
        shutil.copy(tiny.image[0], image)
        prompt = tiny.prompt.replace("Describe the picture.", f"Describe {marker}.")
        assert marker in prompt
        answers = []
        result = mlx_vlm.generate(
            tiny.model,
            tiny.processor,
            prompt,
            image=[str(image)],
            max_tokens=8,
            verbose=False,
        )
        answers.append(str(mlx_vlm_safe._patch.text_of(result)))
        with (
            plant_fault(RuntimeError(f"bad input {marker}"), after_tokens=fail_after),
            pytest.raises(RuntimeError, match=marker),
        ):
            mlx_vlm.generate(
                tiny.model,
                tiny.processor,
                prompt,
                image=[str(image)],
                max_tokens=8,
                verbose=False,
            )
        stream = exports.stream_generate(
            tiny.model, tiny.processor, prompt, image=[str(image)], max_tokens=8
        )
        answers.append(str(mlx_vlm_safe._patch.text_of(next(stream))))
        stream.close()
    finally:
        shutil.rmtree(folder)
    text = exported()
    assert "generate_content" in text  # the search looks at real exports
    assert "mlx_vlm_safe_generations_total" in text
    assert marker not in text
    assert str(folder) not in text
    for answer in answers:
        if len(answer) >= 8:  # shorter pieces can occur in any text by chance
            assert answer not in text
