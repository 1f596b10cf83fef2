"""Measure how servers end on signals, with and without the patch (issue 17).

Not a test: the suite runs one case of each (tests/e2e/test_shutdown.py);
this repeats them and prints a table for the issue's closing note. Two
targets, on the installed mlx-vlm release and the tiny checkpoint:

* ``app``: the suite's FastAPI app (tests/e2e/apps/vision_app.py) under
  uvicorn, a ``max_tokens=100000`` upload in flight, then 2 or 3 SIGINTs
  (0.3 s apart) or one SIGTERM.
* ``server``: mlx-vlm's own server (0.5.0+: ``python -m mlx_vlm.server``),
  9 chat completions served (optionally one long one in flight), then
  SIGINT or SIGTERM.

``--patched`` starts it through ``mlx-vlm-safe run --``; otherwise with
``MLX_VLM_SAFE_DISABLE=1`` (the release as it ships). Each run prints the
exit status (negative: the signal that killed it), the seconds from the
first signal to the exit, and whether the log has mlx's abort line.

    python tools/measure_shutdown.py app --signals INT,INT --runs 5 --patched
    python tools/measure_shutdown.py server --signals TERM --runs 3 --inflight
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

REPO = pathlib.Path(__file__).resolve().parents[1]
APPS = REPO / "tests" / "e2e" / "apps"
sys.path.insert(0, str(REPO))

from mlx_vlm_safe.testing import build_tiny_checkpoint, tiny_image_path  # noqa: E402

ABORT = "terminate called"


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _multipart(image: bytes, **fields: object) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    for name, value in fields.items():
        body.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'
            f"\r\n\r\n{value}\r\n".encode()
        )
    body.write(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
        'filename="u.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
    )
    body.write(image + f"\r\n--{boundary}--\r\n".encode())
    return body.getvalue(), f"multipart/form-data; boundary={boundary}"


def _post(url: str, data: bytes, kind: str, timeout: float = 600) -> None:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": kind})
    with (
        contextlib.suppress(Exception),
        urllib.request.urlopen(request, timeout=timeout) as response,
    ):
        response.read()


def _wait_up(url: str, proc: subprocess.Popen[bytes], log: pathlib.Path) -> None:
    end = time.monotonic() + 240
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"died on start:\n{log.read_text()[-2000:]}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url + "/openapi.json", timeout=5),
        ):
            return
        time.sleep(0.3)
    raise SystemExit("did not start")


def one_run(  # noqa: PLR0912, PLR0915 - one scenario, top to bottom
    target: str, sigs: list[int], patched: bool, inflight: bool, timeout: str = ""
) -> str:
    """Start, load, signal, wait: one line of the table."""
    work = pathlib.Path(tempfile.mkdtemp(prefix="shutdown-"))
    checkpoint = build_tiny_checkpoint(work / "checkpoint")
    image_path = tiny_image_path(work)
    port = _port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLX_VLM_SAFE")}
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(APPS)])
    prefix = [sys.executable, "-m", "mlx_vlm_safe", "run", "--"] if patched else []
    if not patched:
        env["MLX_VLM_SAFE_DISABLE"] = "1"
    if timeout:
        env["MLX_VLM_SAFE_TIMEOUT"] = timeout
    if target == "app":
        env["VISION_APP_MODEL"] = str(checkpoint)
        command = [sys.executable, "-m", "uvicorn", "vision_app:app"]
        command += ["--host", "127.0.0.1", "--port", str(port)]
    else:
        server = os.environ.get("MEASURE_SERVER", "-m mlx_vlm.server").split()
        command = [sys.executable, *server, "--host", "127.0.0.1"]
        command += ["--port", str(port), "--model", str(checkpoint)]
    log = work / "log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            prefix + command, stdout=sink, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env, start_new_session=True,
        )  # fmt: skip
    try:
        _wait_up(url, proc, log)
        png = image_path.read_bytes()
        if target == "app":
            data, kind = _multipart(png, max_tokens=100000)
            long = threading.Thread(target=_post, args=(url + "/sync", data, kind))
        else:
            data_url = "data:image/png;base64," + base64.b64encode(png).decode()

            def chat(tokens: int) -> bytes:
                return json.dumps({
                    "model": str(checkpoint), "max_tokens": tokens,
                    "temperature": 0.0,
                    "messages": [{"role": "user", "content": [
                        {"type": "text", "text": "Describe the picture."},
                        {"type": "image_url", "image_url": {"url": data_url}},
                    ]}],
                }).encode()  # fmt: skip

            for _ in range(9):
                _post(url + "/chat/completions", chat(8), "application/json", 120)
            long = threading.Thread(
                target=_post,
                args=(url + "/chat/completions", chat(100000), "application/json"),
            )
        if target == "app" or inflight:
            long.daemon = True
            long.start()
            time.sleep(3.0)  # well into the generation
        first = time.monotonic()
        for number, sig in enumerate(sigs):
            if number:
                time.sleep(0.3)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
        try:
            status: int | str = proc.wait(timeout=60)
            took = f"{time.monotonic() - first:.1f} s"
        except subprocess.TimeoutExpired:
            status, took = "still running", "> 60 s"
        text = log.read_text(errors="replace")
        aborted = " ABORT" if ABORT in text else ""
        if os.environ.get("MEASURE_SHOW_LOG"):
            print(text[-3000:])
        return f"status {status}, {took}{aborted}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> None:
    """Parse the arguments, run the cases, print one line per run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=("app", "server"))
    parser.add_argument("--signals", default="INT,INT")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--patched", action="store_true")
    parser.add_argument("--inflight", action="store_true")
    parser.add_argument("--timeout", default="", help="MLX_VLM_SAFE_TIMEOUT")
    args = parser.parse_args()
    sigs = [getattr(signal, "SIG" + name) for name in args.signals.split(",")]
    import mlx_vlm

    label = (
        f"mlx-vlm {mlx_vlm.__version__} {args.target} "
        f"{'patched' if args.patched else 'unpatched'} {args.signals}"
        f"{' in-flight' if args.inflight or args.target == 'app' else ''}"
        f"{f' MLX_VLM_SAFE_TIMEOUT={args.timeout}' if args.timeout else ''}"
    )
    for number in range(args.runs):
        result = one_run(args.target, sigs, args.patched, args.inflight, args.timeout)
        print(f"{label} run {number + 1}: {result}", flush=True)


if __name__ == "__main__":
    main()
