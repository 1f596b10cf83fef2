"""A small vision service, written the way the seed app was: no mlx_vlm_safe.

It is started unmodified through ``mlx-vlm-safe run -- python -m uvicorn``
by ``tests/e2e/test_service.py``. The model loads at import, on the main thread;
requests run where FastAPI runs them: the sync endpoint and the streaming
body in Starlette's thread pool, the async endpoint through
``asyncio.to_thread``. Form values go to ``generate()`` as they arrive
(``temperature`` stays a string unless it is a number), like many real apps.
Errors come back as JSON with their type and message.

One endpoint opts into the library on purpose: ``/astream`` streams through
``mlx_vlm_safe.astream_generate`` (the async face). ``/produced`` says how
many items the streaming endpoints have made, so a test can see a stream
stop when its client disconnects.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Any

import mlx_vlm
from fastapi import FastAPI, File, Form, UploadFile
from fastapi.responses import JSONResponse, StreamingResponse

from mlx_vlm_safe.testing import tiny_prompt

if os.environ.get("VISION_APP_LOAD_SHIM"):  # 0.2.0: the suite's load() shim
    here = os.path.abspath(__file__)  # tests/e2e/apps/vision_app.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(here))))
    from conftest import _audio_less_load

    with _audio_less_load():
        MODEL, PROCESSOR = mlx_vlm.load(os.environ["VISION_APP_MODEL"])
else:
    MODEL, PROCESSOR = mlx_vlm.load(os.environ["VISION_APP_MODEL"])
PROMPT = tiny_prompt(PROCESSOR, MODEL.config, "Describe the picture.")
generate = mlx_vlm.generate
if not callable(generate):  # 0.1.x: the attribute can be the CLI module
    generate = sys.modules["mlx_vlm.utils"].generate
# Before 0.1.15 the package does not export stream_generate.
stream_generate = sys.modules["mlx_vlm.utils"].__dict__.get("stream_generate")
stream_generate = getattr(mlx_vlm, "stream_generate", stream_generate)

app = FastAPI()
#: Items the streaming endpoints have produced, in total.
PRODUCED = {"items": 0}


def _text(result: Any) -> str:
    if isinstance(result, tuple):  # 0.1.26-0.2.0
        result = result[0]
    return result if isinstance(result, str) else str(result.text)


def _kwargs(path: str, max_tokens: int, temperature: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"image": [path], "max_tokens": max_tokens}
    if temperature is not None:
        try:
            kwargs["temperature"] = float(temperature)
        except ValueError:
            kwargs["temperature"] = temperature  # passed on as sent
    return kwargs


def _saved(data: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".png", delete=False) as handle:
        handle.write(data)
    return handle.name


def _answer(data: bytes, max_tokens: int, temperature: str | None) -> JSONResponse:
    path = _saved(data)
    try:
        kwargs = _kwargs(path, max_tokens, temperature)
        result = generate(MODEL, PROCESSOR, PROMPT, verbose=False, **kwargs)
        return JSONResponse({"text": _text(result)})
    except Exception as exc:
        return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, 500)
    finally:
        os.unlink(path)


@app.post("/sync")
def sync_endpoint(
    image: UploadFile = File(...),
    max_tokens: int = Form(8),
    temperature: str | None = Form(None),
) -> JSONResponse:
    return _answer(image.file.read(), max_tokens, temperature)


@app.post("/async")
async def async_endpoint(
    image: UploadFile = File(...),
    max_tokens: int = Form(8),
    temperature: str | None = Form(None),
) -> JSONResponse:
    data = await image.read()
    return await asyncio.to_thread(_answer, data, max_tokens, temperature)


@app.post("/stream")
def stream_endpoint(
    image: UploadFile = File(...), max_tokens: int = Form(8)
) -> StreamingResponse:
    path = _saved(image.file.read())

    def pieces() -> Iterator[str]:  # each next() may run on another thread
        try:
            for item in stream_generate(
                MODEL, PROCESSOR, PROMPT, image=[path], max_tokens=max_tokens
            ):
                PRODUCED["items"] += 1
                yield _text(item)
        finally:
            os.unlink(path)

    return StreamingResponse(pieces(), media_type="text/plain")


@app.post("/astream")
async def astream_endpoint(
    image: UploadFile = File(...), max_tokens: int = Form(8)
) -> StreamingResponse:
    import mlx_vlm_safe

    path = _saved(await image.read())

    async def pieces() -> AsyncIterator[str]:
        try:
            async for item in mlx_vlm_safe.astream_generate(
                MODEL, PROCESSOR, PROMPT, image=[path], max_tokens=max_tokens
            ):
                PRODUCED["items"] += 1
                yield _text(item)
        finally:
            os.unlink(path)

    return StreamingResponse(pieces(), media_type="text/plain")


@app.get("/produced")
def produced() -> JSONResponse:
    return JSONResponse(PRODUCED)


@app.get("/memory-wait")
def memory_wait() -> JSONResponse:
    """Seconds the patched calls waited for memory (the app never imports it)."""
    import mlx_vlm_safe

    return JSONResponse({"seconds": mlx_vlm_safe.stats().memory_wait})
