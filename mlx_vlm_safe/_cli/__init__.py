"""The ``mlx-vlm-safe`` command line: ``demo``, ``doctor`` and ``run``.

Strictly private. ``_main`` parses the arguments; each subcommand is its own
module (``_demo``, ``_doctor`` with ``_diagnosis``/``_render``/``_live``/
``_verdicts``, and ``_launch`` for ``run``), imported only when it runs.
"""

from ._main import main

__all__ = ["main"]
