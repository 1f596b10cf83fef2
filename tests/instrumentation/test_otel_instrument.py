"""``opentelemetry-instrument python app.py``: the patch and its spans, no code change.

The app imports mlx_vlm only; the ``opentelemetry_instrumentor`` entry point
is what loads mlx_vlm_safe. With the console exporters, stdout carries the
app's one JSON line, then the spans and the metrics as JSON objects.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
from typing import Any

import pytest

from tools.matrix import Expected

from ..conftest import REPO, Tiny

pytestmark = [pytest.mark.model, pytest.mark.subprocess]
APP = pathlib.Path(__file__).resolve().parent / "apps" / "plain_app.py"


def _objects(text: str) -> list[Any]:
    """Every JSON value printed on ``text``, one after the other."""
    decoder = json.JSONDecoder()
    found, at = [], 0
    while True:
        at = text.find("{", at)
        if at < 0:
            return found
        value, end = decoder.raw_decode(text, at)
        found.append(value)
        at = end


def _instrumented(tiny: Tiny, checkpoint: str, disabled: str = "") -> list[Any]:
    tool = shutil.which(
        "opentelemetry-instrument", path=os.path.dirname(sys.executable)
    )
    assert tool, "opentelemetry-instrumentation is in the tests extra"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLX_VLM_SAFE_")},
        "PYTHONPATH": str(REPO),
        "PLAIN_APP_MODEL": checkpoint,
        "PLAIN_APP_PROMPT": tiny.prompt,
        "PLAIN_APP_IMAGE": tiny.image[0],
        "OTEL_SERVICE_NAME": "plain-app",
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_METRICS_EXPORTER": "console",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": disabled,
    }
    proc = subprocess.run(
        [tool, sys.executable, str(APP)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return _objects(proc.stdout)


def test_the_entry_point_patches_and_emits_spans_and_metrics(
    tiny: Tiny, mlx_vlm: Any, release: Expected, tmp_path: pathlib.Path
) -> None:
    # tools/matrix.py deselects this test there (INSTRUMENTED_APP_TESTS).
    assert not release.has("kwargs_dropped")
    assert not release.has("load_shim")
    from mlx_vlm_safe.testing import build_tiny_checkpoint

    checkpoint = str(build_tiny_checkpoint(tmp_path / "checkpoint"))
    app, *exported = _instrumented(tiny, checkpoint)
    assert app == {"patched_by": True, "error": "TypeError"}
    spans = [o for o in exported if o.get("name") == "generate_content"]
    assert [s["attributes"].get("error.type") for s in spans] == [None, "TypeError"]
    assert [s["attributes"]["mlx_vlm_safe.outcome"] for s in spans] == ["ok", "error"]
    assert spans[0]["attributes"]["gen_ai.usage.output_tokens"] == 4
    assert spans[1]["status"]["status_code"] == "ERROR"
    metrics = {
        m["name"]: m
        for o in exported
        for r in o.get("resource_metrics", ())
        for s in r["scope_metrics"]
        if s["scope"]["name"] == "mlx_vlm_safe"
        for m in s["metrics"]
    }
    points = metrics["gen_ai.client.operation.duration"]["data"]["data_points"]
    by_error = {p["attributes"].get("error.type"): p["count"] for p in points}
    assert by_error == {None: 1, "TypeError": 1}


def test_without_the_entry_point_nothing_is_patched_or_emitted(
    tiny: Tiny, mlx_vlm: Any, release: Expected, tmp_path: pathlib.Path
) -> None:
    """The control: the same run with our instrumentor disabled by name."""
    # tools/matrix.py deselects this test there (INSTRUMENTED_APP_TESTS).
    assert not release.has("kwargs_dropped")
    assert not release.has("load_shim")
    from mlx_vlm_safe.testing import build_tiny_checkpoint

    checkpoint = str(build_tiny_checkpoint(tmp_path / "checkpoint"))
    app, *exported = _instrumented(tiny, checkpoint, disabled="mlx_vlm_safe")
    assert app["patched_by"] is False
    assert [o for o in exported if o.get("name") == "generate_content"] == []
