"""Placeholder; the public API is written in the core issue."""
