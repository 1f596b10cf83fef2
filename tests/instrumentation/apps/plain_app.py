"""An app that knows nothing of mlx_vlm_safe: loads, generates twice, prints.

Run by ``test_otel_instrument.py`` under ``opentelemetry-instrument``. The
model, prompt and image come from the environment; it prints one JSON line:
whether ``mlx_vlm_safe`` got loaded (by the entry point, not by this code).
"""

import json
import os
import sys

import mlx_vlm

generate = mlx_vlm.generate
if not callable(generate):  # 0.1.x: the attribute can be the CLI module
    generate = sys.modules["mlx_vlm.utils"].generate
model, processor = mlx_vlm.load(os.environ["PLAIN_APP_MODEL"])
prompt, image = os.environ["PLAIN_APP_PROMPT"], [os.environ["PLAIN_APP_IMAGE"]]
generate(model, processor, prompt, image=image, max_tokens=4, verbose=False)
error = None
try:
    generate(model, processor, prompt, image=image, max_tokens=4, temperature="0.7")
except Exception as exc:  # reported, not handled
    error = type(exc).__name__
print(json.dumps({"patched_by": "mlx_vlm_safe" in sys.modules, "error": error}))
