"""Public helpers for testing code that uses mlx-vlm, offline.

Importing this package is cheap: mlx, mlx-vlm, numpy, tokenizers and Pillow are
imported only when a helper is called.
"""

from mlx_vlm_safe.testing._checkpoint import (
    build_tiny_checkpoint,
    default_cache_dir,
    tiny_image,
    tiny_image_path,
    tiny_prompt,
)
from mlx_vlm_safe.testing._faults import (
    FaultPlan,
    FaultRecord,
    empty_stream,
    plant_fault,
)

__all__ = [
    "FaultPlan",
    "FaultRecord",
    "build_tiny_checkpoint",
    "default_cache_dir",
    "empty_stream",
    "plant_fault",
    "tiny_image",
    "tiny_image_path",
    "tiny_prompt",
]
