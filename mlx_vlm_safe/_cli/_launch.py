"""``mlx-vlm-safe run -- CMD ...``: run a program with the patch active, untouched.

Strictly private. The program's code is not changed and not wrapped: ``run``
only changes the environment it starts with, then *replaces itself* with the
program (``exec``), so the process manager sees the program's own pid,
signals and exit status.

Two settings, both inherited by every child process (uvicorn's reloader
worker, multiprocessing, subprocesses):

* ``MLX_VLM_SAFE_AUTOPATCH=1``: read by the ``.pth`` hook the wheel installs.
* this package's ``_bootstrap`` folder first on ``PYTHONPATH``: its
  ``sitecustomize`` activates the patch too, then runs the ``sitecustomize``
  it shadows. This is what makes ``run`` independent of the ``.pth`` file:
  it works from an editable install and from a plain ``PYTHONPATH`` checkout.

Either one alone activates the patch; both together are idempotent (the
activation is an import). ``python -E``/``-I`` ignore ``PYTHONPATH``; there
only the ``.pth`` hook of an installed wheel activates it.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from collections.abc import Mapping, Sequence

from .._env import AUTOPATCH

#: The folder ``run`` puts first on ``PYTHONPATH``.
BOOTSTRAP = pathlib.Path(__file__).resolve().parent.parent / "_bootstrap"

#: Exit statuses a POSIX shell uses for these two failures; we reuse them so
#: that scripts treat ``mlx-vlm-safe run -- nosuchcmd`` like ``nosuchcmd``.
NOT_FOUND = 127
NOT_EXECUTABLE = 126


def environment(
    base: Mapping[str, str], settings: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``base`` plus what activates the patch in the program and its children.

    ``settings``: more ``MLX_VLM_SAFE_*`` variables (``--metrics-port``).
    """
    env = {**base, **(settings or {})}
    env[AUTOPATCH] = "1"
    old = env.get("PYTHONPATH", "")
    first = str(BOOTSTRAP)
    if old.split(os.pathsep)[0] != first:  # do not stack up in nested runs
        env["PYTHONPATH"] = first + (os.pathsep + old if old else "")
    return env


def launch(command: Sequence[str], settings: Mapping[str, str] | None = None) -> int:
    """Replace this process with ``command``; return only if that failed.

    Returns:
        127 if the command is not found, 126 if it cannot be executed, or
        (off POSIX, where ``exec`` does not replace the process) the
        program's own exit status.

    """
    env = environment(os.environ, settings)
    argv = list(command)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        if os.name != "posix":  # pragma: no cover - mlx runs on POSIX only
            return subprocess.call(argv, env=env)
        os.execvpe(argv[0], argv, env)
    except FileNotFoundError:
        print(f"mlx-vlm-safe run: command not found: {argv[0]}", file=sys.stderr)
        return NOT_FOUND
    except PermissionError:
        print(f"mlx-vlm-safe run: permission denied: {argv[0]}", file=sys.stderr)
        return NOT_EXECUTABLE
    except OSError as exc:
        print(f"mlx-vlm-safe run: cannot execute {argv[0]}: {exc}", file=sys.stderr)
        return NOT_EXECUTABLE
    return 0  # pragma: no cover - execvpe does not return
