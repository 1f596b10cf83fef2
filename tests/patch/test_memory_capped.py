"""The memory guard against real limits: processes capped at run time.

Each test runs a fresh interpreter whose ``RLIMIT_AS`` is lowered, after the
model is loaded, to the address space in use plus a room sized in KV-cache
steps of the wide checkpoint (``WIDE``: 24 KiB of KV cache per position,
6 MiB per 256-position step). With the room below, a call of 34 prompt tokens
+ up to 222 new tokens (one step) fits; anything longer does not.

Unpatched, the long call dies (SIGSEGV on this machine: mlx does not raise
when the system refuses an allocation). Patched, it fails alone with
``MemoryError`` (or succeeds on a ladder step that fits) and the process
serves the next request.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from mlx_vlm_safe.testing import build_tiny_checkpoint, tiny_image_path

from ..conftest import HOST_MEMORY_CAP, WIDE

pytestmark = [
    pytest.mark.subprocess,
    HOST_MEMORY_CAP,
]

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
STEP_BYTES = 256 * 12 * 2 * 4 * 64 * 4  # 6 MiB
#: One step (6 MiB) and the prefill fit, with the runner's 1 MiB margin; two
#: steps (12 MiB) do not.
ROOM = 9 * 2**20
DEATHS = {-signal.SIGSEGV, -signal.SIGKILL, -signal.SIGABRT, 139, 137, 134}


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("wide")
    path = build_tiny_checkpoint(root / "checkpoint", text_config=WIDE)
    tiny_image_path(root)
    return path


def _env(patched: bool) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), env.get("PYTHONPATH", "")) if p
    )
    env.pop("MLX_VLM_SAFE_MEMORY_LIMIT", None)
    env["MALLOC_ARENA_MAX"] = "1"  # no 64 MiB arena reservations per thread
    if patched:
        env.pop("MLX_VLM_SAFE_DISABLE", None)
    else:
        env["MLX_VLM_SAFE_DISABLE"] = "1"
    return env


def _run(
    checkpoint: pathlib.Path, plan: str, *, patched: bool, room: int = ROOM
) -> tuple[int, list[dict[str, Any]], str]:
    proc = subprocess.run(
        [
            sys.executable,
            str(HERE / "_memory_runner.py"),
            str(checkpoint),
            str(room),
            plan,
        ],
        capture_output=True,
        text=True,
        env=_env(patched),
        timeout=300,
        check=False,
    )
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    return proc.returncode, lines, proc.stderr[-2000:]


def test_unpatched_a_long_generation_kills_the_process(wide: pathlib.Path) -> None:
    code, lines, err = _run(wide, "1000;100", patched=False)
    assert lines, err
    assert "capped" in lines[0], err  # it got as far as the cap
    assert code in DEATHS, (code, lines, err)
    assert len(lines) == 1, lines  # neither the call nor the next one reported


def test_patched_the_long_call_fails_alone_and_the_next_one_is_served(
    wide: pathlib.Path,
) -> None:
    code, lines, err = _run(
        wide, "once:1000;1000;ladder:512,128;1000;100", patched=True
    )
    assert code == 0, (code, lines, err)
    once, default, _, laddered, after = lines[1:]
    # Refused before any allocation, both figures named.
    assert once["error"].startswith("MemoryError: this generation needs about")
    assert "only" in once["error"]
    assert "available" in once["error"]
    # The default ladder (512, 256) has no step that fits: three refusals.
    assert [a[2] for a in default["attempts"]] == ["MemoryError"] * 3
    assert [a[1] for a in default["attempts"]] == [
        {},
        {"max_tokens": 512},
        {"max_tokens": 256},
    ]
    # A ladder with a step that fits succeeds on it.
    assert laddered["ok"]
    assert laddered["tokens"] == 128
    assert laddered["attempts"][-1] == [3, {"max_tokens": 128}, None]
    # And the process serves the next request.
    assert (after["ok"], after["tokens"], after["attempts"]) == (
        True,
        100,
        [[1, {}, None]],
    )


def test_patched_unknown_architecture_stops_in_flight(wide: pathlib.Path) -> None:
    """No estimate: the in-flight check stops the stream before the second step.

    Without a model of the cache it reserves twice the largest growth seen
    (here the first 6 MiB step), so it stops early, after the first check.
    """
    code, lines, err = _run(wide, "unknown;stream:1000;known;once:100", patched=True)
    assert code == 0, (code, lines, err)
    stream, after = lines[2], lines[4]
    assert stream["error"].startswith("MemoryError: generation stopped after")
    # Tokens were yielded before the error; fewer than the 256-position step.
    assert 0 < stream["tokens"] < 256 - 34, stream
    assert after["ok"]
    assert after["tokens"] == 100


# ------------------------------------------------------------------ the server

APP = """
import os, resource
import mlx.core as mx
import mlx_vlm
from fastapi import FastAPI, HTTPException
from mlx_vlm_safe.testing import tiny_prompt

CHECKPOINT = os.environ["MEM_TEST_CHECKPOINT"]
model, processor = mlx_vlm.load(CHECKPOINT)
prompt = tiny_prompt(processor, model.config, "Describe the picture.")
image = [os.environ["MEM_TEST_IMAGE"]]
# Sync endpoints run on a thread pool; mlx-vlm < 0.5 binds its stream to the
# importing thread (see shared docs/threads.md): give each thread its own.
for name in ("mlx_vlm.generate", "mlx_vlm.utils"):
    module = __import__("sys").modules.get(name)
    if hasattr(module, "generation_stream") and hasattr(mx, "new_thread_local_stream"):
        module.generation_stream = mx.new_thread_local_stream(mx.default_device())
app = FastAPI()


@app.get("/health")
def health():
    return {"ok": True}


@app.post("/cap")
def cap(room: int):
    with open("/proc/self/statm", "rb") as f:
        used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (used + room, resource.RLIM_INFINITY))
    return {"capped": used + room}


@app.get("/generate")
def generate(max_tokens: int):
    try:
        result = mlx_vlm.generate(
            model, processor, prompt, image=image, max_tokens=max_tokens
        )
    except Exception as exc:
        raise HTTPException(500, f"{type(exc).__name__}: {exc}") from None
    return {"tokens": result.generation_tokens, "text": result.text}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request(base: str, method: str, path: str) -> tuple[int, Any]:
    request = urllib.request.Request(base + path, method=method)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_server_under_a_memory_cap_answers_500_then_serves_the_next_request(
    wide: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """mlx-vlm brings fastapi and uvicorn; the client is urllib."""
    (tmp_path / "memapp.py").write_text(APP)
    port = _free_port()
    env = _env(patched=True)
    env["PYTHONPATH"] = os.pathsep.join((str(tmp_path), env["PYTHONPATH"]))
    env["MEM_TEST_CHECKPOINT"] = str(wide)
    env["MEM_TEST_IMAGE"] = str(next(wide.parent.glob("tiny-image-*.png")))
    env["MLX_VLM_SAFE_MEMORY_MARGIN"] = str(2**20)
    env["MLX_VLM_SAFE_RETRY_WAIT_BASE"] = "0"
    env["MLX_VLM_SAFE_RETRY_WAIT_MAX"] = "0"
    cli = [sys.executable, "-m", "mlx_vlm_safe", "run", "--"]
    server = subprocess.Popen(
        [*cli, sys.executable, "-m", "uvicorn", "memapp:app", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):  # start-up: imports and load (no timing asserted)
            if server.poll() is not None:
                break
            try:
                if _request(base, "GET", "/health")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        assert server.poll() is None, "the server did not start"
        status, body = _request(base, "GET", "/generate?max_tokens=8")
        assert status == 200, body
        assert _request(base, "POST", f"/cap?room={ROOM}")[0] == 200
        status, body = _request(base, "GET", "/generate?max_tokens=1000")
        assert status == 500, body
        # Refused before allocating, or (a ladder step that passed the
        # pre-flight once freed buffers were given back) stopped in flight.
        assert body["detail"].startswith("MemoryError: "), body
        assert "(mlx_vlm_safe memory guard)" in body["detail"], body
        status, body = _request(base, "GET", "/generate?max_tokens=100")
        assert status == 200, body
        assert body["tokens"] == 100
        assert server.poll() is None, "the server died"
    finally:
        server.terminate()
        try:
            out, _ = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            out, _ = server.communicate()
    assert server.returncode in (0, -signal.SIGTERM), out[-3000:]
