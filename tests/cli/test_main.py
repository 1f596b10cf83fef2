"""The command line's entry: bad usage, ``--version``, exit codes, the script.

Each bad input prints its own usage and one error line and exits 2; no
subcommand prints help; the installed console script runs the doctor.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import pathlib
import subprocess
import sys
from typing import Any

import pytest

from mlx_vlm_safe import _cli
from mlx_vlm_safe._cli import _diagnosis, _doctor
from tools.matrix import Expected

from ._helpers import TIMEOUT, environ, expected_code, python

#: Bad input -> (the usage shown, what its one error line says). The README's
#: and the changelog's bad-input table is this list.
BAD_INPUT = [
    (["bogus"], "mlx-vlm-safe", "invalid choice: 'bogus'"),
    (["--bogus"], "mlx-vlm-safe", "unrecognized arguments: --bogus"),
    (["doctor", "--bogus"], "mlx-vlm-safe doctor", "unrecognized arguments: --bogus"),
    (["doctor", "--json=yes"], "mlx-vlm-safe doctor", "ignored explicit argument"),
    (["doctor", "extra"], "mlx-vlm-safe doctor", "unrecognized arguments: extra"),
    (["demo", "--nope"], "mlx-vlm-safe demo", "unrecognized arguments: --nope"),
    (["demo", "--max-tokens"], "mlx-vlm-safe demo", "expected one argument"),
    (["demo", "--max-tokens", "-3"], "mlx-vlm-safe demo", "between 1 and 1024, got -3"),
    (["demo", "--max-tokens", "0"], "mlx-vlm-safe demo", "between 1 and 1024, got 0"),
    (["demo", "--max-tokens", "10**9"], "mlx-vlm-safe demo", "not a whole number"),
    (
        ["demo", "--max-tokens", "99999999"],
        "mlx-vlm-safe demo",
        "between 1 and 1024, got 99999999",
    ),
    (["demo", "--max-tokens", "abc"], "mlx-vlm-safe demo", "not a whole number: 'abc'"),
    (["demo", "--max-tokens", "1.5"], "mlx-vlm-safe demo", "not a whole number"),
    (["run"], "mlx-vlm-safe run", "run needs a command"),
    (["run", "--"], "mlx-vlm-safe run", "run needs a command"),
    (["run", "--bogus", "--", "python"], "mlx-vlm-safe run", "arguments: --bogus"),
    (["run", "--", "--not-a-program"], "mlx-vlm-safe run", "got '--not-a-program'"),
    (["run", "--", ""], "mlx-vlm-safe run", "not a command: ''"),
    (["run", "--", " "], "mlx-vlm-safe run", "not a command: ' '"),
]


@pytest.mark.parametrize(
    ("argv", "prog", "message"),
    BAD_INPUT,
    ids=[" ".join(repr(a) if not a.strip() else a for a in b[0]) for b in BAD_INPUT],
)
def test_bad_usage_prints_its_own_usage_one_error_line_and_exits_2(
    argv: list[str], prog: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        _cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: {prog} "), err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert errors == [errors[0]], err  # exactly one error line
    assert errors[0].startswith(f"{prog}: error: "), err
    assert message in errors[0], err
    assert "Traceback" not in err


def test_version_prints_the_version_and_exits_0(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        _cli.main(["--version"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    try:
        expected = md.version("mlx-vlm-safe")
    except md.PackageNotFoundError:
        expected = "(not installed: a checkout)"
    assert out == f"mlx-vlm-safe {expected}\n"


def test_a_failure_after_parsing_is_one_error_line_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlx_vlm_safe._cli import _demo

    def broken(**_: Any) -> int:
        raise FileNotFoundError("[Errno 2] No such file or directory: '/proc/nope'")

    monkeypatch.setattr(_demo, "run", broken)
    assert _cli.main(["demo"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "mlx-vlm-safe: error: FileNotFoundError: [Errno 2] No such file or "
        "directory: '/proc/nope'\n"
    )


def test_ctrl_c_exits_130_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:

    def interrupted(**_: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(_doctor, "run", interrupted)
    assert _cli.main(["doctor"]) == 130
    assert capsys.readouterr().err == "mlx-vlm-safe: interrupted\n"


def test_no_subcommand_prints_help_and_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _cli.main([]) == 2
    err = capsys.readouterr().err
    for command in ("demo", "doctor", "run"):
        assert command in err


def test_exit_codes_are_distinct_and_avoid_argparse() -> None:
    codes = list(_diagnosis.STATUS)
    assert len(set(codes)) == len(codes) == 6
    assert 1 not in codes  # an uncaught exception
    assert 2 not in codes  # argparse's usage error


def _console_script() -> pathlib.Path | None:
    script = pathlib.Path(sys.executable).with_name("mlx-vlm-safe")
    return script if script.is_file() else None


@pytest.mark.subprocess
@pytest.mark.skipif(
    _console_script() is None,
    reason="no mlx-vlm-safe console script beside this interpreter: the package "
    "is not installed here (a PYTHONPATH checkout)",
)
def test_console_script_runs_doctor(release: Expected) -> None:
    script = _console_script()
    assert script is not None
    proc = subprocess.run(
        [str(script), "doctor", "--json"],
        capture_output=True,
        text=True,
        env=environ({"PYTHONPATH": None}),
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == expected_code(release)
    assert json.loads(proc.stdout)["patch"]["active"] is True


def test_cli_module_is_importable_without_mlx() -> None:
    # `mlx-vlm-safe --help` must work where mlx cannot load.
    proc = python(
        "-c",
        "import sys, mlx_vlm_safe._cli;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlx','mlx_vlm')))",
    )
    assert proc.stdout.strip() == "[]"
