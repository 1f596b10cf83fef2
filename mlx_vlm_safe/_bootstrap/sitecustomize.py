"""Put first on ``PYTHONPATH`` by ``mlx-vlm-safe run``: activate, then hand over.

Strictly private. Python imports the first ``sitecustomize`` on ``sys.path``
once site-packages and every ``.pth`` file are processed. ``run`` puts this
folder first on ``PYTHONPATH`` and sets ``MLX_VLM_SAFE_AUTOPATCH=1``, so this
module runs in the program and in every Python child it starts (they inherit
the environment: uvicorn's reloader, multiprocessing workers, subprocesses).
It activates the patch through the same boot module as the ``.pth`` hook and
then runs the ``sitecustomize`` it shadows, if any (a distribution's, a
virtualenv's, the user's), so putting it first takes nothing away.
"""

import importlib
import importlib.machinery
import importlib.util
import os
import sys


def _chain() -> None:
    """Execute the next ``sitecustomize`` on ``sys.path`` under that name."""
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


importlib.import_module("_mlx_vlm_safe_autopatch")
_chain()
