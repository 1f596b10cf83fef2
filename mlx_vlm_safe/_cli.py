"""The ``mlx-vlm-safe`` command line (also ``python -m mlx_vlm_safe``).

Strictly private. One small function per subcommand:

* ``demo``: the defect and the fix side by side on the built-in tiny model.
* ``doctor [--json] [--live]``: what is installed, what the probes found,
  what the patch does here, and plain verdicts; the exit status says which
  (see ``_doctor``).
* ``run [--] CMD ...``: run any program with the patch active, its code
  untouched (see ``_launch``).

Bad usage (an unknown subcommand or flag, ``run`` without a command) prints
usage and exits 2, as argparse does. No subcommand at all prints the help and
exits 2 too: the demo builds a model and takes seconds, which is not what a
bare ``mlx-vlm-safe`` should silently do.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

USAGE_ERROR = 2


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The top-level parser and the ``run`` subparser (for its usage errors)."""
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
    doctor = commands.add_parser(
        "doctor",
        help="diagnose this environment; the exit status is the verdict",
        description="Versions, device, probes, fixes and plain verdicts. Exit "
        "status: 0 healthy, 3 affected but fixed by the patch, 4 cannot "
        "generate here, 5 mlx-vlm not installed, 6 error.",
    )
    doctor.add_argument("--json", action="store_true", help="one JSON object")
    doctor.add_argument(
        "--live",
        action="store_true",
        help="also run a real generation on the built-in tiny checkpoint",
    )
    run = commands.add_parser(
        "run",
        help="run a program with the patch active: mlx-vlm-safe run -- python app.py",
        description="Run CMD with the patch active in it and in every Python "
        "process it starts; its code is untouched.",
    )
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    return parser, run


def _demo(args: argparse.Namespace) -> int:
    from ._demo import run

    return run(max_tokens=args.max_tokens)


def _doctor(args: argparse.Namespace) -> int:
    from ._doctor import run

    return run(as_json=args.json, live=args.live)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    command = list(args.cmd)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        parser.error("run needs a command: mlx-vlm-safe run -- python app.py")
    if command[0].startswith("-"):  # a flag of ours we do not know, not a program
        parser.error(f"expected a command to run, got {command[0]!r}")
    from ._launch import launch

    return launch(command)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for bad usage)."""
    parser, run_parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    if args.command == "doctor":
        return _doctor(args)
    if args.command == "run":
        return _run(run_parser, args)
    parser.print_help(sys.stderr)
    return USAGE_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
