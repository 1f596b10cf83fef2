"""Bad ``MLX_VLM_SAFE_*`` values: one line on stderr each, and in ``doctor``.

And the call log's reach: on stderr when the app configured no logging (as
under uvicorn), through the app's handlers, once, when it did.
"""

from __future__ import annotations

import json
import sys

import pytest

from mlx_vlm_safe import _env, instrumentation  # noqa: F401 - registers its checks
from mlx_vlm_safe._patch import _variables  # noqa: F401 - registers its checks

from ..conftest import REPO, run_python

BAD = {
    "MLX_VLM_SAFE_RETRY_ATTEMPTS": "three",
    "MLX_VLM_SAFE_RETRY_WAIT_BASE": "-1",
    "MLX_VLM_SAFE_RETRY_LADDER": "max_tokens",
    "MLX_VLM_SAFE_MEMORY_LIMIT": "lots",
    "MLX_VLM_SAFE_MEMORY_MARGIN": "-3",
    "MLX_VLM_SAFE_METRICS_PORT": "http",
    "MLX_VLM_SAFE_METRICS_ADDR": "not an address",
    "MLX_VLM_SAFE_OTEL": "maybe",
}
GOOD = {
    "MLX_VLM_SAFE_RETRY_ATTEMPTS": "2",
    "MLX_VLM_SAFE_RETRY_WAIT_BASE": "0.5",
    "MLX_VLM_SAFE_RETRY_LADDER": "max_tokens=256",
    "MLX_VLM_SAFE_MEMORY_LIMIT": "2GB",
    "MLX_VLM_SAFE_MEMORY_MARGIN": "off",
    "MLX_VLM_SAFE_METRICS_PORT": "9464",
    "MLX_VLM_SAFE_METRICS_ADDR": "0.0.0.0",
    "MLX_VLM_SAFE_OTEL": "on",
}


def test_every_variable_read_later_is_registered() -> None:
    assert set(BAD) <= set(_env.registered())


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_bad_value_is_named_and_a_good_one_is_not(name: str) -> None:
    (message,) = _env.bad_values({name: BAD[name]})
    assert message.startswith(f"{name}={BAD[name]!r} is not valid (")
    assert _env.bad_values({name: GOOD[name]}) == ()


_IMPORT_AND_FAIL = """
import logging, sys
if sys.argv[1] == "configured":
    logging.basicConfig(format="ROOT %(name)s %(message)s")
import mlx_vlm_safe, mlx_vlm
from mlx_vlm_safe.testing import build_tiny_checkpoint, tiny_image_path, tiny_prompt
model, processor = mlx_vlm.load(str(build_tiny_checkpoint()))
prompt = tiny_prompt(processor, model.config, "Describe the picture.")
mlx_vlm_safe.patch()  # a second time: nothing is announced twice
try:
    mlx_vlm.generate(model, processor, prompt, image=[str(tiny_image_path())],
                     max_tokens=4, verbose=False, temperature="0.7")
except TypeError:
    print("raised")
"""


@pytest.mark.model
@pytest.mark.subprocess
@pytest.mark.parametrize("logging_set_up", ["bare", "configured"])
def test_bad_values_warn_once_each_and_the_call_log_is_seen_once(
    logging_set_up: str,
) -> None:
    code = f"import sys; sys.argv[1:] = [{logging_set_up!r}]\n" + _IMPORT_AND_FAIL
    proc = run_python(code, env=BAD)
    assert proc.stdout.strip() == "raised", proc.stderr
    lines = proc.stderr.splitlines()
    warned = [line for line in lines if line.startswith("mlx_vlm_safe: warning: ")]
    assert len(warned) == len(BAD), proc.stderr
    for name, value in BAD.items():
        assert sum(f"{name}={value!r} is not valid" in w for w in warned) == 1
    failed = [line for line in lines if "generate failed: TypeError" in line]
    prefix = (
        "ROOT mlx_vlm_safe.calls "
        if logging_set_up == "configured"
        else ("WARNING:mlx_vlm_safe.calls: ")
    )
    assert len(failed) == 1, proc.stderr
    assert failed[0].startswith(f"{prefix}generate failed: TypeError after 1 attempt")


@pytest.mark.subprocess
def test_doctor_lists_every_bad_value_in_its_warnings() -> None:
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "mlx_vlm_safe", "doctor", "--json"],
        capture_output=True,
        text=True,
        env={**_clean_env(), **BAD},
        cwd=REPO,
        check=False,
        timeout=300,
    )
    warnings = json.loads(proc.stdout)["warnings"]
    for name, value in BAD.items():
        assert sum(f"{name}={value!r} is not valid" in w for w in warnings) == 1


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("MLX_VLM_SAFE_")}
