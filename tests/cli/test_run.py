"""``mlx-vlm-safe run`` and the ``.pth`` start-up hook: patched without code changes."""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import re
import sys

import pytest

from mlx_vlm_safe import _env
from mlx_vlm_safe._cli import _launch
from tools.matrix import ENTRY_ERROR, Expected

from ._helpers import BOOT_DIR, PTH, REPO, cli_run, installed_pth, needs_install, python

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
    proc = cli_run("run", *separator, sys.executable, "-c", _PROBE_START, "-x", "--y")
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
    proc = python("-c", "import sys, mlx_vlm; print('mlx_vlm_safe' in sys.modules)")
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
    patched = cli_run("run", "--", sys.executable, *args).stdout
    plain = python(*args).stdout  # the control: the same program, not run by us
    assert patched.startswith("TypeError: "), patched
    if release.verdicts["wired_limit"] == "swallows":
        assert "'NoneType' object has no attribute 'token'" in plain
    elif release.fails_on_entry:
        assert re.search(ENTRY_ERROR, plain), plain
    else:  # nothing to fix: the same real error with or without the patch
        assert plain == patched


@pytest.mark.subprocess
def test_kill_switch_wins_over_run() -> None:
    code = "import sys, mlx_vlm, mlx_vlm_safe; print(mlx_vlm_safe.is_patched())"
    proc = cli_run(
        "run", "--", sys.executable, "-c", code, extra={"MLX_VLM_SAFE_DISABLE": "1"}
    )
    assert proc.stdout.strip() == "False", proc.stderr


@pytest.mark.subprocess
def test_run_passes_the_exit_status_through() -> None:
    proc = cli_run("run", "--", sys.executable, "-c", "raise SystemExit(7)")
    assert proc.returncode == 7


@pytest.mark.subprocess
def test_run_unknown_command_exits_127() -> None:
    proc = cli_run("run", "--", "no-such-command-mlx-vlm-safe")
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
    proc = cli_run("run", "--", sys.executable, "-c", _CHILD)
    assert proc.stdout.strip() == "True", proc.stderr


@pytest.mark.subprocess
def test_run_still_runs_the_sitecustomize_it_shadows(tmp_path: pathlib.Path) -> None:
    (tmp_path / "sitecustomize.py").write_text("import builtins\nbuiltins.THEIRS = 1\n")
    code = (
        "import builtins, sys;"
        "print(getattr(builtins, 'THEIRS', 0), 'mlx_vlm_safe' in sys.modules)"
    )
    pythonpath = os.pathsep.join([str(tmp_path), str(REPO)])
    proc = cli_run(
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
    proc = python("-S", "-c", code, extra={"MLX_VLM_SAFE_AUTOPATCH": value})
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
    proc = python(
        "-c", _STARTED, extra={"MLX_VLM_SAFE_AUTOPATCH": value, "PYTHONPATH": None}
    )
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == loaded
    assert ("is not a boolean" in proc.stderr) is (value == "garbage")


@needs_install
def test_installed_hook_files_match_the_source() -> None:
    # An editable install copies these two files: a stale copy would lie.
    pth = installed_pth()
    assert pth is not None
    assert pth.read_bytes() == (BOOT_DIR / PTH).read_bytes()
    boot = pth.with_name("_mlx_vlm_safe_autopatch.py")
    assert boot.read_bytes() == (BOOT_DIR / "_mlx_vlm_safe_autopatch.py").read_bytes()
