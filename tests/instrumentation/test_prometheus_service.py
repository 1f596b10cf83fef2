"""The seed-shaped FastAPI app under ``mlx-vlm-safe run --metrics-port P --``.

``tests/e2e/apps/vision_app.py`` is started unmodified under uvicorn, with
nothing but ``--metrics-port`` added to the command that starts it. After N
uploads that succeed and M that fail, a real scrape of ``/metrics`` must
count exactly N ``ok`` and M ``error``, each error under the exception class
the app itself returned to its client.
"""

from __future__ import annotations

import collections
import contextlib
import json
import pathlib
import urllib.request
from typing import Any

import pytest

from mlx_vlm_safe.testing import tiny_image_path
from tools.matrix import Expected

from ..conftest import temperature_keyword
from ..e2e.test_service import Service, _free_port
from ..e2e.test_service import _serving as _service

pytestmark = [pytest.mark.model, pytest.mark.subprocess]


def _serving(
    workdir: pathlib.Path, release: Expected, metrics: int
) -> contextlib.AbstractContextManager[Service]:
    """The suite's vision app under ``run --metrics-port metrics``."""
    return _service(workdir, release, run_args=("--metrics-port", str(metrics)))


def _scrape(port: int) -> tuple[str, dict[str, list[tuple[dict[str, str], float]]]]:
    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return text, samples


def test_a_scrape_counts_each_upload_by_outcome_and_error_type(
    tmp_path: pathlib.Path, release: Expected, mlx_vlm: Any
) -> None:
    png = tiny_image_path(tmp_path).read_bytes()
    metrics = _free_port()
    with _serving(tmp_path, release, metrics) as service:
        ok = 0
        errors: collections.Counter[str] = collections.Counter()
        for path in ("/sync", "/async", "/stream", "/sync"):
            status, body = service.post(path, png)
            assert status == 200, body
            ok += 1
        uploads = [(b"this is not an image", {}), (png[: len(png) // 2], {})]
        # The app passes ``temperature``: 0.1.x before 0.1.21 ignore it.
        if temperature_keyword(mlx_vlm) == "temperature":
            uploads += [(png, {"temperature": "warm"})] * 2
        for data, fields in uploads:
            status, body = service.post("/sync", data, **fields)
            assert status == 500, body
            errors[json.loads(body)["error"].partition(":")[0]] += 1
        text, samples = _scrape(metrics)
        log = service.log.read_text(errors="replace")
    calls = {
        (labels["outcome"], labels["error_type"]): value
        for labels, value in samples["mlx_vlm_safe_generations_total"]
    }
    want = {("ok", ""): ok, **{("error", t): n for t, n in errors.items()}}
    assert calls == want, log
    counts = {
        labels["outcome"]: value
        for labels, value in samples["mlx_vlm_safe_generation_duration_seconds_count"]
    }
    assert counts == {"ok": ok, "error": sum(errors.values())}
    assert samples["mlx_vlm_safe_calls_in_flight"] == [({}, 0.0)]
    assert samples["mlx_vlm_safe_output_tokens_total"] == [
        ({}, float(ok * release.tokens_for(8)))
    ]
    # The app configured no logging: each failure is one line on its stderr.
    for error_type, n in errors.items():
        line = f"WARNING:mlx_vlm_safe.calls: generate failed: {error_type} after 1 "
        assert log.count(line) == n, log
    print(f"scrape after {ok} ok and {sum(errors.values())} failed uploads:")
    print("\n".join(t for t in text.splitlines() if "mlx_vlm_safe_" in t))
