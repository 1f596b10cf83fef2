"""The ``mlx-vlm-safe`` command line (also ``python -m mlx_vlm_safe``).

Strictly private. Subcommands are added here; each is a small function.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlx-vlm-safe",
        description="Make mlx_vlm.generate() safe; diagnose and demonstrate.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run real generations on the built-in tiny model, unpatched vs patched",
    )
    demo.add_argument("--max-tokens", type=int, default=8, help="tokens per call (8)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (argparse exits 2 on bad usage)."""
    args = _parser().parse_args(argv)
    if args.command in (None, "demo"):
        from ._demo import run

        return run(max_tokens=getattr(args, "max_tokens", 8))
    return 2  # pragma: no cover - argparse rejects unknown commands first


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
