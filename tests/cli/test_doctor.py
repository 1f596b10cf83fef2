"""``mlx-vlm-safe doctor``: facts, verdicts and exit codes for the installed release.

What the doctor must find is read from ``tools/matrix.py`` for the installed
release, so the same tests check 0.3.5 (affected) and 0.7.10 (healthy) and
fail if the doctor calls either one wrong.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
import io
import json
import pathlib
import platform
import sys
from typing import Any

import pytest

from mlx_vlm_safe._cli import _diagnosis, _doctor, _render
from mlx_vlm_safe._releases import release_for
from tools.matrix import Expected, Install, mlx_device

from ._helpers import (
    BOUND,
    REPO,
    ROOT_CAUSE,
    cli_run,
    doctor_json,
    expected_code,
    fixes,
    python,
)


@pytest.mark.subprocess
def test_doctor_json_reports_this_release(
    mlx_vlm: Any, release: Expected, install: Install
) -> None:
    code, d = doctor_json()
    assert d["schema"] == _diagnosis.SCHEMA
    assert (code, d["exit_code"]) == (expected_code(release),) * 2
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
    assert d["device"] == mlx_device()
    assert d["layout"]["kind"] == release.layout
    probes = {p["name"]: p["outcome"] for p in d["probes"]}
    assert probes["wired_limit"] == release.verdicts["wired_limit"]
    assert probes["empty_stream"] == release.verdicts["empty_stream"]
    assert probes["thread_stream"] == release.thread_verdict(BOUND)
    assert d["patch"]["status"] == "patched"
    assert d["patch"]["active"] is True
    assert {f["name"] for f in d["patch"]["fixes"]} == set(fixes(release))
    assert d["affected"] is bool(ROOT_CAUSE & set(fixes(release)))
    verdicts = " ".join(d["verdicts"])
    yes = release.verdicts["wired_limit"] == "swallows"
    assert f"NoneType/token crash: {'YES' if yes else 'no'}" in verdicts
    assert "pinning mlx-vlm 0.3.4 help? No: 0.3.2-0.3.10" in verdicts
    assert "upstream? mlx-vlm 0.1.10 (pass_caller_kwargs); 0.3.11 " in verdicts
    assert "0.3.11 (propagate_errors, generate_off_metal);" in verdicts
    assert "0.6.9 (replace_invalid_utf8), so 0.6.9+ for all of them" in verdicts
    if probes["thread_stream"] == "bound_to_importing_thread":
        # The error this mlx gave on this device, not a CPU one written down.
        thread = next(p for p in d["probes"] if p["name"] == "thread_stream")
        assert thread["detail"].partition("; ")[0].rstrip(".") in verdicts
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
    _, d = doctor_json()
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
    proc = cli_run("doctor")
    code = expected_code(release)
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
    code, d = doctor_json("--live", extra={"MLX_VLM_SAFE_CACHE": str(tmp_path)})
    live = d["live"]
    if release.has("load_shim"):  # 0.2.0's load() cannot load the checkpoint
        assert (code, live["ok"]) == (_diagnosis.CANNOT_GENERATE, False)
        assert "AudioModel" in live["error"]
        return
    assert code == expected_code(release)
    assert live["ok"] is True, live["error"]
    # the tiny model never stops early (0.1.7-0.1.9 ignore max_tokens)
    assert live["tokens"] == release.tokens_for(_diagnosis.LIVE_TOKENS)
    assert live["finish_reason"] == "length"
    assert live["text"]
    assert live["worker_thread_same"] is True


@pytest.mark.subprocess
def test_doctor_with_the_kill_switch_says_not_fixed(release: Expected) -> None:
    code, d = doctor_json(extra={"MLX_VLM_SAFE_DISABLE": "1"})
    affected = bool(ROOT_CAUSE & set(fixes(release)))
    expected = _diagnosis.ERROR if affected else _diagnosis.HEALTHY
    if release.fails_on_entry:  # and nothing replaces wired_limit now
        expected = _diagnosis.CANNOT_GENERATE
    assert code == expected
    assert d["patch"]["status"] == "disabled"
    assert d["patch"]["active"] is False
    probes = {p["name"]: p["outcome"] for p in d["probes"]}
    # probed all the same
    assert probes["wired_limit"] == release.verdicts["wired_limit"]
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
    proc = python("-S", "-c", _NO_SITE.format(repo=str(REPO), argv=argv))
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
    proc = python("-c", _BROKEN_MLX)
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
    proc = python("-c", code)
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
    proc = cli_run("doctor", "--json", extra={"MLX_VLM_SAFE_AUTOPATCH": "maybe"})
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


def test_in_process_diagnosis_round_trips_to_json(release: Expected) -> None:
    d = _doctor.collect()
    data = json.loads(json.dumps(dataclasses.asdict(d)))
    assert data["exit_code"] == expected_code(release)
    assert _render.render(d).endswith(f"(exit {data['exit_code']})\n")


@pytest.mark.subprocess
def test_doctor_started_by_run_says_the_patch_was_already_active() -> None:
    proc = cli_run("run", "--", sys.executable, "-m", "mlx_vlm_safe", "doctor")
    assert "this process  patched (active already at start-up" in proc.stdout
    plain = cli_run("doctor")  # the control: doctor patched only itself
    assert "this process  patched (active)\n" in plain.stdout


def test_the_mlx_row_names_the_backend_that_is_installed() -> None:
    """mlx's CUDA backends are mlx-cuda-12 / mlx-cuda-13 (mlx[cuda], [cuda13])."""
    d = _doctor.collect()
    assert set(_diagnosis.BACKENDS) <= set(d.packages)
    mlx = d.packages["mlx"]
    for backend in ("mlx-cuda-12", "mlx-cuda-13", "mlx-metal", "mlx-cpu"):
        packages = {**d.packages, **dict.fromkeys(_diagnosis.BACKENDS), backend: mlx}
        text = _render.render(dataclasses.replace(d, packages=packages))
        assert f"mlx           {mlx} ({backend} {mlx})\n" in text


def test_the_thread_verdict_quotes_the_error_of_this_device() -> None:
    from mlx_vlm_safe._cli import _verdicts

    bound = {"wired_limit": "swallows", "thread_stream": "bound_to_importing_thread"}
    gpu = "RuntimeError: There is no Stream(gpu, 2) in current thread."
    details = {"thread_stream": gpu}
    on_cuda = " ".join(_verdicts.affected("cuda", "0.3.5", bound, details))
    assert "(RuntimeError: There is no Stream(gpu, 2) in current thread," in on_cuda
    assert "Stream(cpu" not in on_cuda
    unknown = " ".join(_verdicts.affected("cuda", "0.3.5", bound))  # no detail
    assert "There is no Stream(gpu, …) in current thread" in unknown


def test_live_with_an_unusable_cache_folder_says_so_not_cannot_generate(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only HOME in a container is not a broken mlx: its own verdict.

    A folder under a regular file cannot be created, even by root (who writes
    into read-only modes), so this is what any unusable cache folder does.
    """
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("MLX_VLM_SAFE_CACHE", str(blocker / "cache"))
    d = _doctor.collect(live=True)
    assert d.live is not None
    assert (d.live.ok, d.live.cache_unusable) == (False, True)
    assert d.live.cache == str(blocker / "cache")
    assert (d.status, d.exit_code) == ("cache-unusable", _diagnosis.CACHE_UNUSABLE)
    verdict = next(v for v in d.verdicts if "cache folder" in v)
    assert str(blocker / "cache") in verdict
    assert "MLX_VLM_SAFE_CACHE=" in verdict
    assert "says nothing about mlx" in verdict
    text = _render.render(d)
    assert f"NOT RUN: cache folder {blocker / 'cache'} unusable" in text
    assert text.endswith(f"status: cache-unusable (exit {_diagnosis.CACHE_UNUSABLE})\n")
