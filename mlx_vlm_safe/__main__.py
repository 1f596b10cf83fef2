"""``python -m mlx_vlm_safe``: see ``_cli``."""

import sys

from ._cli import main

sys.exit(main())
