"""An app that knows nothing of mlx_vlm_safe: loads, generates twice, prints.

Run by ``test_otel_instrument.py`` under ``opentelemetry-instrument``. The
model, prompt and image come from the environment; it prints one JSON line:
whether ``mlx_vlm_safe`` got loaded (by the entry point, not by this code).
"""

import json
import os
import sys

import mlx_vlm

model, processor = mlx_vlm.load(os.environ["PLAIN_APP_MODEL"])
prompt, image = os.environ["PLAIN_APP_PROMPT"], [os.environ["PLAIN_APP_IMAGE"]]
mlx_vlm.generate(model, processor, prompt, image=image, max_tokens=4, verbose=False)
error = None
try:
    mlx_vlm.generate(
        model, processor, prompt, image=image, max_tokens=4, temperature="0.7"
    )
except Exception as exc:  # reported, not handled
    error = type(exc).__name__
print(json.dumps({"patched_by": "mlx_vlm_safe" in sys.modules, "error": error}))
