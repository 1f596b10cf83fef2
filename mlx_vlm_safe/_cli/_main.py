"""The ``mlx-vlm-safe`` command line (also ``python -m mlx_vlm_safe``).

Strictly private. One small function per subcommand:

* ``demo``: the defect and the fix side by side on the built-in tiny model.
* ``doctor [--json] [--live]``: what is installed, what the probes found,
  what the patch does here, and plain verdicts; the exit status says which
  (see ``_doctor``).
* ``run [--metrics-port P] [--] CMD ...``: run any program with the patch
  active, its code untouched (see ``_launch``); ``--metrics-port`` serves
  its calls' Prometheus metrics.

Bad usage (an unknown subcommand or flag, ``run`` without a command, a
``--max-tokens`` out of range) prints the usage of the subcommand concerned and
one ``error:`` line, and exits 2, as argparse does. No subcommand at all prints
the help and exits 2 too: the demo builds a model and takes seconds, which is
not what a bare ``mlx-vlm-safe`` should silently do. ``--version`` prints the
version and exits 0. Whatever fails after the arguments are read (the demo's
model, an unusable cache folder) ends as one ``error:`` line, never a traceback;
Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

USAGE_ERROR = 2
#: What a shell reports for a program ended by Ctrl-C (128 + SIGINT).
INTERRUPTED = 130
#: ``demo --max-tokens`` bounds: at least one token, and few enough that the
#: demo's 14 real generations on the tiny model stay well under a minute.
MAX_TOKENS_RANGE = (1, 1024)


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("mlx-vlm-safe")
    except metadata.PackageNotFoundError:  # a plain checkout on PYTHONPATH
        return "(not installed: a checkout)"


def _max_tokens(text: str) -> int:
    """``--max-tokens``: an int in :data:`MAX_TOKENS_RANGE`, else a usage error."""
    low, high = MAX_TOKENS_RANGE
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(
            f"must be between {low} and {high}, got {value}"
        )
    return value


def _port(text: str) -> int:
    """``--metrics-port``: 1-65535, else a usage error (checked where it is read)."""
    from ..instrumentation import parse_port

    try:
        port = parse_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}, got {text!r}") from None
    if port is None:
        raise argparse.ArgumentTypeError("a port is needed")
    return port


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and each subcommand's (for their usage errors)."""
    parser = argparse.ArgumentParser(
        prog="mlx-vlm-safe",
        description="Make mlx_vlm.generate() safe; diagnose and demonstrate.",
    )
    parser.add_argument(
        "--version", action="version", version=f"mlx-vlm-safe {_version()}"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run real generations on the built-in tiny model, unpatched vs patched",
    )
    demo.add_argument(
        "--max-tokens",
        type=_max_tokens,
        default=8,
        help=f"tokens per call, {MAX_TOKENS_RANGE[0]}-{MAX_TOKENS_RANGE[1]} (8)",
    )
    doctor = commands.add_parser(
        "doctor",
        help="diagnose this environment; the exit status is the verdict",
        description="Versions, device, probes, fixes and plain verdicts. Exit "
        "status: 0 healthy, 3 affected but fixed by the patch, 4 cannot "
        "generate here, 5 mlx-vlm not installed, 6 error, 7 --live found its "
        "cache folder unusable.",
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
    run.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve Prometheus metrics of the program's calls on this port "
        "(sets MLX_VLM_SAFE_METRICS_PORT; needs prometheus-client)",
    )
    run.add_argument(
        "--metrics-addr",
        metavar="ADDR",
        help="... on this address (127.0.0.1; sets MLX_VLM_SAFE_METRICS_ADDR)",
    )
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    return parser, {"demo": demo, "doctor": doctor, "run": run}


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
    if not command[0].strip() or "\0" in "".join(command):
        parser.error(f"not a command: {command[0]!r}")
    from ._launch import launch

    settings: dict[str, str] = {}
    if args.metrics_port is not None:
        from ..instrumentation import ADDR_VARIABLE, PORT_VARIABLE, parse_addr

        settings[PORT_VARIABLE] = str(args.metrics_port)
        if args.metrics_addr is not None:
            try:
                settings[ADDR_VARIABLE] = parse_addr(args.metrics_addr)
            except ValueError as exc:
                parser.error(f"argument --metrics-addr: {exc}")
    elif args.metrics_addr is not None:
        parser.error("--metrics-addr needs --metrics-port")
    return launch(command, settings)


def _dispatch(
    parser: argparse.ArgumentParser,
    subparsers: dict[str, argparse.ArgumentParser],
    argv: Sequence[str] | None,
) -> int:
    args, extra = parser.parse_known_args(argv)
    if extra:  # report it against the subcommand it was given to
        where = subparsers.get(args.command, parser)
        where.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "demo":
        return _demo(args)
    if args.command == "doctor":
        return _doctor(args)
    if args.command == "run":
        return _run(subparsers["run"], args)
    parser.print_help(sys.stderr)
    return USAGE_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for bad usage)."""
    parser, subparsers = _parser()
    try:
        return _dispatch(parser, subparsers, argv)
    except KeyboardInterrupt:
        print("mlx-vlm-safe: interrupted", file=sys.stderr)
        return INTERRUPTED
    except SystemExit:
        raise
    except Exception as exc:  # one line, never a traceback (doctor has its own)
        message = " ".join(f"{type(exc).__name__}: {exc}".split())
        print(f"mlx-vlm-safe: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
