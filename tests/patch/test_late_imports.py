"""Modules imported while patched copy our wrapper; unpatch() must still undo that."""

from __future__ import annotations

import pytest

from ..conftest import run_python

PROGRAM = """
import sys
import mlx_vlm_safe, mlx_vlm
import importlib
late = None
candidates = ("mlx_vlm.server", "mlx_vlm.chat", "mlx_vlm.evals.utils")
for name in candidates + ("mlx_vlm.generate",):
    try:
        importlib.import_module(name)
        late = name
        break
    except Exception:
        continue
mlx_vlm_safe.unpatch()
left = [
    f"{mod}.{attr}"
    for mod, module in list(sys.modules.items())
    if mod == "mlx_vlm" or mod.startswith("mlx_vlm.")
    for attr, value in list(vars(module).items())
    if getattr(value, "__mlx_vlm_safe__", False)
]
print(late, left)
"""


@pytest.mark.subprocess
def test_unpatch_restores_copies_made_by_modules_imported_while_patched() -> None:
    """After unpatch() no mlx_vlm* attribute holds our wrapper, late imports too."""
    result = run_python(PROGRAM)
    assert result.returncode == 0, result.stderr
    late, left = result.stdout.strip().splitlines()[-1].split(" ", 1)
    assert late != "None", "no mlx_vlm submodule could be imported late"
    assert left == "[]", left
