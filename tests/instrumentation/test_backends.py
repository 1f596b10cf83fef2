"""The optional backends in a fresh interpreter: asked for, absent, or failing.

Each case runs a small program that generates on the tiny checkpoint, with
the optional packages present or blocked (an import hook that makes them
look uninstalled), and checks what it imported, what it printed, and that
it kept generating.
"""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest

from ..conftest import run_python

pytestmark = [pytest.mark.model, pytest.mark.subprocess]

PROGRAM = """
import json, sys, time
BLOCKED = {blocked!r}

class Block:  # these packages look uninstalled
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

sys.meta_path.insert(0, Block())
import mlx_vlm_safe
after_import = sorted(m for m in ("prometheus_client", "opentelemetry")
                      if m in sys.modules)
import mlx_vlm
from mlx_vlm_safe.testing import build_tiny_checkpoint, tiny_image_path, tiny_prompt
model, processor = mlx_vlm.load(str(build_tiny_checkpoint()))
prompt = tiny_prompt(processor, model.config, "Describe the picture.")
for _ in range({calls}):
    mlx_vlm.generate(model, processor, prompt, image=[str(tiny_image_path())],
                     max_tokens=4, verbose=False)
print(json.dumps({{
    "after_import": after_import,
    "loaded": sorted(m for m in ("prometheus_client", "opentelemetry")
                     if m in sys.modules),
    "calls": mlx_vlm_safe.stats().calls,
}}), flush=True)
{then}
"""


def _program(blocked: tuple[str, ...] = (), calls: int = 1, then: str = "") -> str:
    return PROGRAM.format(blocked=set(blocked), calls=calls, then=then)


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "mlx_vlm_safe: warning" in line]


def test_nothing_optional_is_imported_unless_asked_for() -> None:
    """Both backends installed (the tests extra), neither asked for: neither loads."""
    proc = run_python(_program())
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"after_import": [], "loaded": [], "calls": 1}
    assert _warnings(proc.stderr) == []


def test_opentelemetry_is_used_when_asked_for() -> None:
    proc = run_python(_program(), env={"MLX_VLM_SAFE_OTEL": "1"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "after_import": [],
        "loaded": ["opentelemetry"],
        "calls": 1,
    }
    assert _warnings(proc.stderr) == []


def test_opentelemetry_asked_for_but_absent_warns_once() -> None:
    proc = run_python(
        _program(blocked=("opentelemetry",), calls=2), env={"MLX_VLM_SAFE_OTEL": "1"}
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"after_import": [], "loaded": [], "calls": 2}
    (warning,) = _warnings(proc.stderr)
    assert "opentelemetry-api is not installed" in warning


def test_metrics_asked_for_without_prometheus_client_warn_once() -> None:
    proc = run_python(
        _program(blocked=("prometheus_client",), calls=2),
        env={"MLX_VLM_SAFE_METRICS_PORT": "9"},
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["calls"] == 2
    (warning,) = _warnings(proc.stderr)
    assert "prometheus-client is not installed" in warning


def test_a_port_in_use_warns_once_and_the_app_runs_on() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_python(
            _program(calls=2), env={"MLX_VLM_SAFE_METRICS_PORT": str(port)}
        )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["calls"] == 2
    (warning,) = _warnings(proc.stderr)
    assert f"cannot serve on 127.0.0.1:{port}" in warning
    assert "PROMETHEUS_MULTIPROC_DIR" in warning


def test_multiprocess_mode_serves_every_workers_calls(tmp_path: object) -> None:
    """Two workers, one port: the one that got it serves both workers' counts."""
    import pathlib
    import subprocess
    import sys

    from ..conftest import REPO

    folder = pathlib.Path(str(tmp_path)) / "multiproc"
    folder.mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        "MLX_VLM_SAFE_METRICS_PORT": str(port),
        "PROMETHEUS_MULTIPROC_DIR": str(folder),
    }
    import os

    full = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    serving = subprocess.Popen(
        [sys.executable, "-c", _program(calls=1, then="sys.stdin.read()")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full,
    )
    try:
        assert serving.stdout is not None
        first = json.loads(serving.stdout.readline())
        assert first["calls"] == 1
        other = run_python(_program(calls=2), env=env)
        assert other.returncode == 0, other.stderr
        (warning,) = _warnings(other.stderr)
        assert "another worker serves this one's metrics" in warning
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
    finally:
        serving.communicate("", timeout=60)
    line = 'mlx_vlm_safe_generations_total{error_type="",outcome="ok"} 3.0'
    assert line in text.splitlines(), text
