"""Public helpers for testing code that uses mlx-vlm, offline."""
