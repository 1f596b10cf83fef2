"""The command line: bad usage, ``doctor``, ``run`` and the ``.pth`` start-up hook.

Everything that depends on how an interpreter starts runs in a fresh one
(``sys.executable -m mlx_vlm_safe ...``), with the environment spelled out:
the suite may run from a checkout (``PYTHONPATH``) or from an editable
install (CI's nox session), and each test says which one it needs. What the
doctor must find is read from ``tools/matrix.py`` for the installed release, so the
same tests check 0.3.5 (affected) and 0.7.10 (healthy) and fail if the doctor
calls either one wrong.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata as md
import io
import json
import os
import pathlib
import platform
import re
import site
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import pytest

from mlx_vlm_safe import _cli, _env
from mlx_vlm_safe._cli import _diagnosis, _doctor, _launch, _render
from mlx_vlm_safe._releases import release_for
from mlx_vlm_safe.testing import build_tiny_checkpoint, tiny_image_path
from tools.matrix import ENTRY_ERROR, Expected, Install, streams_bound

REPO = pathlib.Path(__file__).resolve().parents[2]
BOOT_DIR = REPO / "mlx_vlm_safe" / "_bootstrap"
PTH = "mlx_vlm_safe_autopatch.pth"
TIMEOUT = 300  # generous bound for an interpreter that imports mlx-vlm on 2 cores
ROOT_CAUSE = {
    "propagate_errors",
    "generate_off_metal",
    "never_empty_stream",
    "thread_local_stream",
}
#: Whether this mlx binds streams to their thread (adds the thread fix).
BOUND = streams_bound(md.version("mlx"))


def _fixes(release: Expected) -> tuple[str, ...]:
    return release.fixes_on(BOUND)


def _environ(extra: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """This environment minus our switches, with the checkout importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLX_VLM_SAFE_")}
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), old) if p)
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _python(
    *args: str, extra: Mapping[str, str | None] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=_environ(extra),
        timeout=TIMEOUT,
        check=False,
        cwd=REPO,
    )


def _cli_run(
    *args: str, extra: Mapping[str, str | None] | None = None
) -> subprocess.CompletedProcess[str]:
    return _python("-m", "mlx_vlm_safe", *args, extra=extra)


def _doctor_json(
    *args: str, extra: Mapping[str, str | None] | None = None
) -> tuple[int, dict[str, Any]]:
    proc = _cli_run("doctor", "--json", *args, extra=extra)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)  # stdout is only the JSON


def _expected_code(release: Expected) -> int:
    return _diagnosis.AFFECTED_FIXED if ROOT_CAUSE & set(_fixes(release)) else 0


@pytest.fixture(scope="module")
def assets(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[pathlib.Path, pathlib.Path]:
    root = tmp_path_factory.mktemp("cli-assets")
    return build_tiny_checkpoint(root / "checkpoint"), tiny_image_path(root)


def _installed_pth() -> pathlib.Path | None:
    dirs = [*site.getsitepackages(), site.getusersitepackages()]
    return next(
        (pathlib.Path(d) / PTH for d in dirs if (pathlib.Path(d) / PTH).is_file()), None
    )


needs_install = pytest.mark.skipif(
    _installed_pth() is None,
    reason=f"{PTH} is not in this interpreter's site-packages: the package is "
    "not installed here (a PYTHONPATH checkout); CI installs it with pip -e",
)


# --------------------------------------------------------------------- usage


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
    from mlx_vlm_safe._cli import _doctor

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


# -------------------------------------------------------------------- doctor


@pytest.mark.subprocess
def test_doctor_json_reports_this_release(
    mlx_vlm: Any, release: Expected, install: Install
) -> None:
    code, d = _doctor_json()
    assert d["schema"] == _diagnosis.SCHEMA
    assert (code, d["exit_code"]) == (_expected_code(release),) * 2
    assert d["status"] == _diagnosis.STATUS[code]
    assert d["python"]["version"] == platform.python_version()
    assert d["python"]["executable"] == sys.executable
    for name, version in d["packages"].items():
        try:
            assert version == md.version(name), name
        except md.PackageNotFoundError:
            assert version is None, name
    m = d["mlx_vlm"]
    assert (m["installed"], m["importable"]) == (True, True)
    assert m["version"] == mlx_vlm.__version__ == install.version
    assert m["metadata_version"] == install.metadata_version
    assert sorted(m["distributions"]) == sorted(install.distributions)
    known = release_for(mlx_vlm.__version__)  # by the code's own version
    assert m["release"] == (f"{known.first}-{known.last}" if known else None)
    assert d["device"] == "cpu"  # CI is Linux CPU; the release table is for it
    assert d["layout"]["kind"] == release.layout
    probes = {p["name"]: p["outcome"] for p in d["probes"]}
    assert probes["wired_limit"] == release.wired_limit
    assert probes["empty_stream"] == release.empty_stream
    assert probes["thread_stream"] == release.thread_verdict(BOUND)
    assert d["patch"]["status"] == "patched"
    assert d["patch"]["active"] is True
    assert {f["name"] for f in d["patch"]["fixes"]} == set(_fixes(release))
    assert d["affected"] is bool(ROOT_CAUSE & set(_fixes(release)))
    verdicts = " ".join(d["verdicts"])
    yes = release.wired_limit == "swallows"
    assert f"NoneType/token crash: {'YES' if yes else 'no'}" in verdicts
    assert "pinning mlx-vlm 0.3.4 help? No: 0.3.2-0.3.10" in verdicts
    assert "0.3.11 lets errors through; 0.6.0 also guards" in verdicts
    warnings = " ".join(d["warnings"])
    disagree = install.metadata_version not in (None, install.version)
    assert ("but the package metadata says" in warnings) is disagree, warnings
    assert ("no 'mlx-vlm' package metadata" in warnings) is (
        install.metadata_version is None
    ), warnings
    shared = len(install.distributions) > 1
    assert ("distributions install the mlx_vlm package" in warnings) is shared
    assert ("not in mlx_vlm_safe's release table" in warnings) is (known is None)
    assert d["live"] is None


@pytest.mark.subprocess
def test_doctor_json_keys_are_the_documented_schema() -> None:
    _, d = _doctor_json()
    doc = _doctor.__doc__ or ""
    for key in d:
        assert f"``{key}``" in doc, f"top-level key {key!r} is not documented"
    for section in ("python", "mlx", "mlx_vlm", "layout", "patch", "activation"):
        for key in d[section]:
            assert f"``{key}``" in doc, f"{section}.{key} is not documented"


@pytest.mark.subprocess
def test_doctor_text_has_facts_verdicts_and_the_same_exit_code(
    mlx_vlm: Any, release: Expected
) -> None:
    proc = _cli_run("doctor")
    code = _expected_code(release)
    assert proc.returncode == code
    out = proc.stdout
    assert f"mlx-vlm       {mlx_vlm.__version__} (__version__)" in out
    assert f"status: {_diagnosis.STATUS[code]} (exit {code})" in out
    assert "Would pinning mlx-vlm 0.3.4 help? No" in out
    assert "Traceback" not in proc.stderr


@pytest.mark.subprocess
@pytest.mark.model
def test_doctor_live_generates_on_the_tiny_checkpoint(
    release: Expected, tmp_path: pathlib.Path
) -> None:
    code, d = _doctor_json("--live", extra={"MLX_VLM_SAFE_CACHE": str(tmp_path)})
    live = d["live"]
    if release.has("load_shim"):  # 0.2.0's load() cannot load the checkpoint
        assert (code, live["ok"]) == (_diagnosis.CANNOT_GENERATE, False)
        assert "AudioModel" in live["error"]
        return
    assert code == _expected_code(release)
    assert live["ok"] is True, live["error"]
    # the tiny model never stops early (0.1.7-0.1.9 ignore max_tokens)
    assert live["tokens"] == release.tokens_for(_diagnosis.LIVE_TOKENS)
    assert live["finish_reason"] == "length"
    assert live["text"]
    assert live["worker_thread_same"] is True


@pytest.mark.subprocess
def test_doctor_with_the_kill_switch_says_not_fixed(release: Expected) -> None:
    code, d = _doctor_json(extra={"MLX_VLM_SAFE_DISABLE": "1"})
    affected = bool(ROOT_CAUSE & set(_fixes(release)))
    expected = _diagnosis.ERROR if affected else _diagnosis.HEALTHY
    if release.fails_on_entry:  # and nothing replaces wired_limit now
        expected = _diagnosis.CANNOT_GENERATE
    assert code == expected
    assert d["patch"]["status"] == "disabled"
    assert d["patch"]["active"] is False
    probes = {p["name"]: p["outcome"] for p in d["probes"]}
    assert probes["wired_limit"] == release.wired_limit  # probed all the same
    assert probes["thread_stream"] == release.thread_verdict(BOUND)
    if affected:
        assert any("NOT fixed in this process" in v for v in d["verdicts"])


_NO_SITE = """
import sys
sys.path.insert(0, {repo!r})
from mlx_vlm_safe._cli import main
sys.exit(main({argv!r}))
"""


@pytest.mark.subprocess
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_doctor_without_mlx_vlm_says_so_and_exits_5(as_json: bool) -> None:
    # -S: no site-packages at all, so no mlx-vlm (and no mlx, no packaging).
    argv = ["doctor", "--json"] if as_json else ["doctor"]
    proc = _python("-S", "-c", _NO_SITE.format(repo=str(REPO), argv=argv))
    assert proc.returncode == _diagnosis.NOT_INSTALLED == 5
    assert "Traceback" not in proc.stderr, proc.stderr
    if as_json:
        d = json.loads(proc.stdout)
        assert d["status"] == "not-installed"
        assert d["mlx_vlm"]["installed"] is False
        assert d["affected"] is None
    else:
        assert "mlx-vlm is not installed" in proc.stdout


_BROKEN_MLX = """
import sys
class NoLibmlx:
    def find_spec(self, name, path=None, target=None):
        if name == "mlx.core":
            raise ImportError("libmlx.so: cannot open shared object file")
        return None
sys.meta_path.insert(0, NoLibmlx())
from mlx_vlm_safe._cli import main
sys.exit(main(["doctor"]))
"""


@pytest.mark.subprocess
def test_doctor_when_mlx_cannot_load_exits_4() -> None:
    # What `pip install mlx` (no [cpu] extra) does on Linux, simulated at import.
    proc = _python("-c", _BROKEN_MLX)
    assert proc.returncode == _diagnosis.CANNOT_GENERATE == 4
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "libmlx.so" in proc.stdout
    assert '"mlx[cpu]"' in proc.stdout


@pytest.mark.subprocess
def test_doctor_warns_when_version_and_metadata_disagree(install: Install) -> None:
    code = (
        "import sys, mlx_vlm; mlx_vlm.__version__ = '9.9.9'\n"
        "from mlx_vlm_safe._cli import main; sys.exit(main(['doctor', '--json']))"
    )
    proc = _python("-c", code)
    d = json.loads(proc.stdout)
    assert d["mlx_vlm"]["version"] == "9.9.9"
    assert d["mlx_vlm"]["metadata_version"] == install.metadata_version
    warnings = " ".join(d["warnings"])
    if install.metadata_version is None:  # a fork: no mlx-vlm metadata at all
        assert "mlx_vlm 9.9.9 has no 'mlx-vlm' package metadata" in warnings
    else:
        assert (
            "__version__ is 9.9.9 but the package metadata says "
            f"mlx-vlm {install.metadata_version}"
        ) in warnings


@pytest.mark.subprocess
def test_doctor_reports_a_malformed_autopatch_value() -> None:
    proc = _cli_run("doctor", "--json", extra={"MLX_VLM_SAFE_AUTOPATCH": "maybe"})
    d = json.loads(proc.stdout)
    assert d["activation"]["autopatch_variable"] == "maybe"
    assert d["activation"]["autopatch"] is None
    assert any(
        "MLX_VLM_SAFE_AUTOPATCH='maybe' is not a boolean" in w for w in d["warnings"]
    )


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_doctor_failing_itself_exits_6_without_traceback(
    as_json: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*, live: bool = False) -> _diagnosis.Diagnosis:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(_doctor, "collect", broken)
    out = io.StringIO()
    assert _doctor.run(as_json=as_json, out=out) == _diagnosis.ERROR == 6
    text = out.getvalue()
    if as_json:
        assert json.loads(text) == {
            "schema": _diagnosis.SCHEMA,
            "status": "error",
            "exit_code": 6,
            "error": "doctor failed: RuntimeError: disk on fire",
        }
    else:
        assert "doctor failed: RuntimeError: disk on fire" in text


def test_exit_codes_are_distinct_and_avoid_argparse() -> None:
    codes = list(_diagnosis.STATUS)
    assert len(set(codes)) == len(codes) == 5
    assert 1 not in codes  # an uncaught exception
    assert 2 not in codes  # argparse's usage error


def test_in_process_diagnosis_round_trips_to_json(release: Expected) -> None:
    d = _doctor.collect()
    data = json.loads(json.dumps(dataclasses.asdict(d)))
    assert data["exit_code"] == _expected_code(release)
    assert _render.render(d).endswith(f"(exit {data['exit_code']})\n")


# ----------------------------------------------------------------------- run

_PROBE_START = """
import json, sys
started = "mlx_vlm_safe" in sys.modules
heavy = sorted(m for m in ("mlx", "mlx.core", "mlx_vlm") if m in sys.modules)
import mlx_vlm
import mlx_vlm_safe
print(json.dumps({"started": started, "heavy": heavy,
                  "patched": mlx_vlm_safe.is_patched(), "argv": sys.argv[1:]}))
"""


@pytest.mark.subprocess
@pytest.mark.parametrize("separator", [["--"], []], ids=["with --", "without --"])
def test_run_activates_the_patch_at_start_without_code_changes(
    separator: list[str],
) -> None:
    proc = _cli_run("run", *separator, sys.executable, "-c", _PROBE_START, "-x", "--y")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result == {
        "started": True,
        "heavy": [],
        "patched": True,
        "argv": ["-x", "--y"],
    }


def test_plain_python_is_not_activated() -> None:
    # The control for the test above: without `run`, nothing activates it.
    proc = _python("-c", "import sys, mlx_vlm; print('mlx_vlm_safe' in sys.modules)")
    assert proc.stdout.strip() == "False", proc.stderr


_REAL_ERROR = """
import sys, mlx_vlm
from mlx_vlm.prompt_utils import apply_chat_template
model, processor = mlx_vlm.load(sys.argv[1])
prompt = apply_chat_template(processor, model.config, "Describe it.", num_images=1)
try:
    mlx_vlm.generate(model, processor, prompt, image=[sys.argv[2]], max_tokens=4,
                     temperature="0.7", verbose=False)  # a str, as from a JSON body
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}")
"""


@pytest.mark.subprocess
@pytest.mark.model
def test_run_makes_an_untouched_program_see_the_real_error(
    assets: tuple[pathlib.Path, pathlib.Path], release: Expected
) -> None:
    if release.shape != "result":
        pytest.skip(
            "the program is written for 0.3.0+ (GenerationResult, `temperature`); "
            f"this release returns {release.shape} and samples with `temp`"
        )
    checkpoint, image = assets
    args = ("-c", _REAL_ERROR, str(checkpoint), str(image))
    patched = _cli_run("run", "--", sys.executable, *args).stdout
    plain = _python(*args).stdout  # the control: the same program, not run by us
    assert patched.startswith("TypeError: "), patched
    if release.wired_limit == "swallows":
        assert "'NoneType' object has no attribute 'token'" in plain
    elif release.fails_on_entry:
        assert re.search(ENTRY_ERROR, plain), plain
    else:  # nothing to fix: the same real error with or without the patch
        assert plain == patched


@pytest.mark.subprocess
def test_kill_switch_wins_over_run() -> None:
    code = "import sys, mlx_vlm, mlx_vlm_safe; print(mlx_vlm_safe.is_patched())"
    proc = _cli_run(
        "run", "--", sys.executable, "-c", code, extra={"MLX_VLM_SAFE_DISABLE": "1"}
    )
    assert proc.stdout.strip() == "False", proc.stderr


@pytest.mark.subprocess
def test_run_passes_the_exit_status_through() -> None:
    proc = _cli_run("run", "--", sys.executable, "-c", "raise SystemExit(7)")
    assert proc.returncode == 7


@pytest.mark.subprocess
def test_run_unknown_command_exits_127() -> None:
    proc = _cli_run("run", "--", "no-such-command-mlx-vlm-safe")
    assert proc.returncode == _launch.NOT_FOUND == 127
    assert "command not found: no-such-command-mlx-vlm-safe" in proc.stderr


_CHILD = """
import subprocess, sys
code = "import sys; print('mlx_vlm_safe' in sys.modules)"
print(subprocess.run([sys.executable, "-c", code], capture_output=True,
                     text=True, check=True).stdout.strip())
"""


@pytest.mark.subprocess
def test_run_reaches_child_processes() -> None:
    # uvicorn's reloader, multiprocessing workers: they inherit the environment.
    proc = _cli_run("run", "--", sys.executable, "-c", _CHILD)
    assert proc.stdout.strip() == "True", proc.stderr


@pytest.mark.subprocess
def test_run_still_runs_the_sitecustomize_it_shadows(tmp_path: pathlib.Path) -> None:
    (tmp_path / "sitecustomize.py").write_text("import builtins\nbuiltins.THEIRS = 1\n")
    code = (
        "import builtins, sys;"
        "print(getattr(builtins, 'THEIRS', 0), 'mlx_vlm_safe' in sys.modules)"
    )
    pythonpath = os.pathsep.join([str(tmp_path), str(REPO)])
    proc = _cli_run(
        "run", "--", sys.executable, "-c", code, extra={"PYTHONPATH": pythonpath}
    )
    assert proc.stdout.split() == ["1", "True"], proc.stderr


def test_run_environment_does_not_stack_in_nested_runs() -> None:
    once = _launch.environment({"PYTHONPATH": "/x"})
    assert once["PYTHONPATH"] == os.pathsep.join([str(_launch.BOOTSTRAP), "/x"])
    assert once[_launch.AUTOPATCH] == "1"
    assert _launch.environment(once)["PYTHONPATH"] == once["PYTHONPATH"]
    assert _launch.environment({})["PYTHONPATH"] == str(_launch.BOOTSTRAP)


# ------------------------------------------------------- the .pth start-up hook


def test_boot_module_accepts_the_same_spellings_as_the_kill_switch() -> None:
    boot = importlib.import_module("mlx_vlm_safe._bootstrap._mlx_vlm_safe_autopatch")
    for raw in [
        "1",
        "true",
        "YES",
        " on ",
        "0",
        "false",
        "No",
        "off",
        "",
        "maybe",
        "2",
    ]:
        try:
            expected: bool | None = _env.parse_flag("X", {"X": raw})
        except ValueError:
            expected = None
        assert boot.decide(raw) is expected, raw
    assert boot.decide(None) is False


def test_pth_file_is_one_cheap_import_line() -> None:
    lines = (BOOT_DIR / PTH).read_text().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("import os;")  # site exec()s lines starting "import "
    assert "MLX_VLM_SAFE_AUTOPATCH" in lines[0]


_THROUGH_SITE = """
import json, site, sys
sys.path[:0] = [{boot!r}, {repo!r}]
site.addpackage({boot!r}, {pth!r}, set())
print(json.dumps(sorted(m for m in sys.modules if "mlx" in m and "." not in m)))
"""


@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("value", "loaded", "warns"),
    [
        (None, [], False),
        ("1", ["_mlx_vlm_safe_autopatch", "mlx_vlm_safe"], False),
        ("on", ["_mlx_vlm_safe_autopatch", "mlx_vlm_safe"], False),
        ("0", [], False),  # every "off" spelling is judged in the .pth line itself
        ("", [], False),
        (" OFF ", [], False),
        ("false", [], False),
        ("no", [], False),
        ("maybe", ["_mlx_vlm_safe_autopatch"], True),
    ],
    ids=["unset", "1", "on", "0", "empty", "OFF", "false", "no", "malformed"],
)
def test_pth_line_processed_by_site(
    value: str | None, loaded: list[str], warns: bool
) -> None:
    # -S: nothing of site-packages runs; then site's own .pth reader runs ours.
    code = _THROUGH_SITE.format(boot=str(BOOT_DIR), repo=str(REPO), pth=PTH)
    proc = _python("-S", "-c", code, extra={"MLX_VLM_SAFE_AUTOPATCH": value})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == loaded  # never mlx, never mlx_vlm
    warnings = [
        line for line in proc.stderr.splitlines() if "MLX_VLM_SAFE_AUTOPATCH" in line
    ]
    assert len(warnings) == (1 if warns else 0), proc.stderr
    if warns:
        assert "'maybe' is not a boolean" in warnings[0]
        assert "NOT activated" in warnings[0]


_STARTED = (
    "import json, sys;"
    "print(json.dumps(sorted(m for m in sys.modules if 'mlx' in m and '.' not in m)))"
)


@needs_install
@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("value", "loaded"),
    [
        (None, []),
        ("1", ["_mlx_vlm_safe_autopatch", "mlx_vlm_safe"]),
        ("garbage", ["_mlx_vlm_safe_autopatch"]),
    ],
    ids=["unset", "1", "malformed"],
)
def test_installed_pth_hook_at_interpreter_start(
    value: str | None, loaded: list[str]
) -> None:
    proc = _python(
        "-c", _STARTED, extra={"MLX_VLM_SAFE_AUTOPATCH": value, "PYTHONPATH": None}
    )
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == loaded
    assert ("is not a boolean" in proc.stderr) is (value == "garbage")


@needs_install
def test_installed_hook_files_match_the_source() -> None:
    # An editable install copies these two files: a stale copy would lie.
    pth = _installed_pth()
    assert pth is not None
    assert pth.read_bytes() == (BOOT_DIR / PTH).read_bytes()
    boot = pth.with_name("_mlx_vlm_safe_autopatch.py")
    assert boot.read_bytes() == (BOOT_DIR / "_mlx_vlm_safe_autopatch.py").read_bytes()


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
        env=_environ({"PYTHONPATH": None}),
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == _expected_code(release)
    assert json.loads(proc.stdout)["patch"]["active"] is True


def test_cli_module_is_importable_without_mlx() -> None:
    # `mlx-vlm-safe --help` must work where mlx cannot load.
    proc = _python(
        "-c",
        "import sys, mlx_vlm_safe._cli;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlx','mlx_vlm')))",
    )
    assert proc.stdout.strip() == "[]"


# ---------------------------------------------------------------------- demo


@pytest.mark.model
def test_demo_labels_follow_max_tokens_and_messages_are_whole(
    release: Expected, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlx_vlm_safe._cli import _demo

    monkeypatch.setenv("MLX_VLM_SAFE_CACHE", str(tmp_path))
    out = io.StringIO()
    assert _demo.run(out=out, max_tokens=3) == 0
    text = out.getvalue()
    assert "normal call, max_tokens=3" in text
    assert "max_tokens=8" not in text
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("call "))
    table = lines[start : lines.index("", start)]
    assert all(len(line) <= 40 + 2 * (_demo.COLUMN + 2) for line in table), text
    joined = " ".join(" ".join(lines).split())  # undo the wrapping
    if release.has("rejects_int_repetition_penalty"):
        assert "must be a non-negative float, got 1" in joined, text
    for legend in _demo.LEGEND:  # the legend, whole
        assert " ".join(legend.split()) in joined, text
    assert "[length]" in text


def test_report_str_is_a_readable_multi_line_summary(release: Expected) -> None:
    import mlx_vlm_safe

    report = mlx_vlm_safe.report()
    text = str(report)
    lines = text.splitlines()
    assert lines[0] == "mlx_vlm_safe report: patched (active)"
    assert len(lines) > 5
    assert all(len(line) < 200 for line in lines), text
    for fix in report.fixes:
        assert f"fix          {fix.name}: " in text
    for probe in report.probes:
        assert f"probe        {probe.name}: {probe.outcome}" in text
    assert repr(report).startswith("Report(status='patched'")  # the dataclass


@pytest.mark.subprocess
def test_doctor_started_by_run_says_the_patch_was_already_active() -> None:
    proc = _cli_run("run", "--", sys.executable, "-m", "mlx_vlm_safe", "doctor")
    assert "this process  patched (active already at start-up" in proc.stdout
    plain = _cli_run("doctor")  # the control: doctor patched only itself
    assert "this process  patched (active)\n" in plain.stdout
