"""Helpers for the command-line tests: fresh interpreters, spelled-out environments.

Everything that depends on how an interpreter starts runs in a fresh one
(``sys.executable -m mlx_vlm_safe ...``), with the environment spelled out:
the suite may run from a checkout (``PYTHONPATH``) or from an editable
install (CI's nox session), and each test says which one it needs.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import pathlib
import site
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import pytest

from mlx_vlm_safe._cli import _diagnosis
from mlx_vlm_safe._patch import FIXES
from tools.matrix import Expected, mlx_device, streams_bound

REPO = pathlib.Path(__file__).resolve().parents[2]


BOOT_DIR = REPO / "mlx_vlm_safe" / "_bootstrap"


PTH = "mlx_vlm_safe_autopatch.pth"


TIMEOUT = 300  # generous bound for an interpreter that imports mlx-vlm on 2 cores


#: The fixes ``doctor`` counts as "this release is affected" (from their specs).
ROOT_CAUSE = frozenset(spec.name for spec in FIXES if spec.root_cause)


#: Whether this mlx binds streams to their thread (adds the thread fix).
BOUND = streams_bound(md.version("mlx"), mlx_device())


def fixes(release: Expected) -> tuple[str, ...]:
    return release.fixes_on(BOUND)


def environ(extra: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """This environment minus our switches, with the checkout importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLX_VLM_SAFE_")}
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), old) if p)
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def python(
    *args: str, extra: Mapping[str, str | None] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=environ(extra),
        timeout=TIMEOUT,
        check=False,
        cwd=REPO,
    )


def cli_run(
    *args: str, extra: Mapping[str, str | None] | None = None
) -> subprocess.CompletedProcess[str]:
    return python("-m", "mlx_vlm_safe", *args, extra=extra)


def doctor_json(
    *args: str, extra: Mapping[str, str | None] | None = None
) -> tuple[int, dict[str, Any]]:
    proc = cli_run("doctor", "--json", *args, extra=extra)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)  # stdout is only the JSON


def expected_code(release: Expected) -> int:
    return _diagnosis.AFFECTED_FIXED if ROOT_CAUSE & set(fixes(release)) else 0


def installed_pth() -> pathlib.Path | None:
    dirs = [*site.getsitepackages(), site.getusersitepackages()]
    return next(
        (pathlib.Path(d) / PTH for d in dirs if (pathlib.Path(d) / PTH).is_file()), None
    )


needs_install = pytest.mark.skipif(
    installed_pth() is None,
    reason=f"{PTH} is not in this interpreter's site-packages: the package is "
    "not installed here (a PYTHONPATH checkout); CI installs it with pip -e",
)
