"""patch(), unpatch(), import orders, the kill switch: the lifecycle contract."""

from __future__ import annotations

import json
import logging
import pathlib
import re
import sys
import threading
from types import ModuleType
from typing import Any

import pytest

import mlx_vlm_safe
from mlx_vlm_safe._patch._locate import unwrap
from tools.matrix import ENTRY_ERROR, Expected, Install

from ..conftest import Tiny, run_python


def _mlx_vlm_bindings() -> dict[tuple[str, str], int]:
    """id() of every function-valued attribute of every loaded mlx_vlm* module."""
    out: dict[tuple[str, str], int] = {}
    for name, module in list(sys.modules.items()):
        if not (name == "mlx_vlm" or name.startswith("mlx_vlm.")):
            continue
        if not isinstance(module, ModuleType):
            continue
        for attr, value in list(vars(module).items()):
            if callable(value) and not isinstance(value, type | ModuleType):
                out[(name, attr)] = id(value)
    return out


def _ours(value: object) -> bool:
    return bool(getattr(value, "__mlx_vlm_safe__", False))


def test_patch_is_idempotent_and_never_stacks(mlx_vlm: Any) -> None:
    """Patching twice changes nothing: one layer, the same wrapper objects."""
    first = mlx_vlm.generate
    mlx_vlm_safe.patch()
    mlx_vlm_safe.patch()
    assert mlx_vlm.generate is first
    assert _ours(mlx_vlm.generate)
    assert not _ours(mlx_vlm.generate.__wrapped__)


def test_unpatch_restores_every_original_by_identity(mlx_vlm: Any) -> None:
    """After unpatch() every mlx_vlm* attribute is the object it was before."""
    mlx_vlm_safe.unpatch()
    before = _mlx_vlm_bindings()
    mlx_vlm_safe.patch()
    changed = {k for k, v in _mlx_vlm_bindings().items() if before.get(k) != v}
    assert ("mlx_vlm", "generate") in changed
    mlx_vlm_safe.unpatch()
    assert _mlx_vlm_bindings() == before
    mlx_vlm_safe.unpatch()  # idempotent
    assert _mlx_vlm_bindings() == before
    assert not mlx_vlm_safe.is_patched()


def test_repatch_after_unpatch_gives_one_fresh_layer(mlx_vlm: Any) -> None:
    """patch / unpatch / patch: one layer of wrapper over the original."""
    mlx_vlm_safe.unpatch()
    original = mlx_vlm.generate
    mlx_vlm_safe.patch()
    mlx_vlm_safe.unpatch()
    mlx_vlm_safe.patch()
    assert mlx_vlm.generate.__wrapped__ is original
    assert unwrap(mlx_vlm.generate) is original


def test_someone_elses_wrapper_is_left_alone(mlx_vlm: Any) -> None:
    """unpatch() restores only where our wrapper is still in place."""
    ours = mlx_vlm.generate

    def theirs(*args: Any, **kwargs: Any) -> Any:
        return ours(*args, **kwargs)

    mlx_vlm.generate = theirs
    try:
        report = mlx_vlm_safe.unpatch()
        assert mlx_vlm.generate is theirs
        assert any("replaced by someone else" in w for w in report.warnings)
    finally:
        mlx_vlm.generate = unwrap(ours)


def test_report_describes_the_installed_release(
    mlx_vlm: Any, release: Expected, install: Install
) -> None:
    """The report names versions, device, layout, probes and where fixes went.

    It tells the truth about forks and co-installs: the code's own version,
    the metadata's (None for a fork), every distribution that ships mlx_vlm.
    """
    report = mlx_vlm_safe.report()
    assert report.status == "patched"
    assert report.active
    assert report.version == mlx_vlm.__version__ == install.version
    assert report.metadata_version == install.metadata_version
    assert report.distributions == install.distributions
    assert report.device in {"cpu", "cuda", "metal"}
    assert report.probe("wired_limit") == release.verdicts["wired_limit"]
    generate_fix = next(f for f in report.fixes if f.name == "none_safe_generate")
    assert "mlx_vlm.generate" in generate_fix.targets
    with pytest.raises(AttributeError):
        report.status = "unpatched"  # type: ignore[misc]


def test_report_and_unpatch_read_the_installed_packages_once(
    install: Install, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """``packages_distributions()`` reads every distribution's file list
    (0.5 s on a box with 197): once per process, not once per report."""
    import importlib.metadata

    real = importlib.metadata.packages_distributions
    scans = []

    def counting() -> Any:
        scans.append(1)
        return real()

    monkeypatch.setattr(importlib.metadata, "packages_distributions", counting)
    monkeypatch.syspath_prepend(tmp_path)  # a new sys.path: read again, once
    for _ in range(3):
        assert mlx_vlm_safe.report().distributions == install.distributions
        assert mlx_vlm_safe.unpatch().distributions == install.distributions
        mlx_vlm_safe.patch()
    assert len(scans) == 1


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


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_patch_rejects_a_bad_argument(bad: object) -> None:
    """patch(strict=...) takes a bool and says so, naming the value."""
    with pytest.raises(ValueError, match=repr(bad)):
        mlx_vlm_safe.patch(strict=bad)  # type: ignore[arg-type]


@pytest.mark.model
def test_patch_and_calls_from_many_threads(
    tiny: Tiny, mlx_vlm: Any, exports: Any, release: Expected
) -> None:
    """Concurrent patch/unpatch while generating: calls succeed, never two layers.

    The generation runs on the main thread, because a call from a worker that
    lands while unpatched meets the release's own stream, which may belong to
    the importing thread (tests/patch/test_threads.py covers worker threads). On a
    release that cannot generate off Metal unpatched (0.1.22-0.3.1), a call
    that lands between an unpatch() and a patch() fails on entry, exactly as
    the release does; every other call, and the one after the churn, succeeds.
    """
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            for _ in range(30):
                mlx_vlm_safe.unpatch()
                mlx_vlm_safe.patch()
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=churn) for _ in range(3)]
    for w in workers:
        w.start()
    calls = 0
    while any(w.is_alive() for w in workers) or calls == 0:
        try:
            result = tiny.call(mlx_vlm.generate, max_tokens=2)
        except (KeyError, RuntimeError) as exc:
            if not (release.fails_on_entry and re.search(ENTRY_ERROR, str(exc))):
                raise
        else:
            assert result is not None
        calls += 1
    for w in workers:
        w.join()
    assert errors == []
    mlx_vlm_safe.patch()
    assert mlx_vlm_safe.is_patched()
    assert tiny.call(mlx_vlm.generate, max_tokens=2) is not None
    for value in (mlx_vlm.generate, exports.stream_generate):
        assert _ours(value)
        assert not _ours(value.__wrapped__)


def test_logger_has_a_null_handler() -> None:
    """A library logs through its own logger and never configures logging."""
    handlers = logging.getLogger("mlx_vlm_safe").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)


# ---------------------------------------------------------- fresh interpreters

# Each binding is "ours" (our wrapper), "forwards" (a function that looks our
# wrapper up at call time, as 0.6+'s server/app.py installs in server/openai.py
# and server/anthropic.py: proved by calling it with a max_tokens that only our
# wrapper refuses, at once) or "original" (a stale copy: the bug).
_CHECK = """
import json, sys
import mlx_vlm_safe
report = mlx_vlm_safe.report()

def kind(value):
    if getattr(value, "__mlx_vlm_safe__", False):
        return "ours"
    try:
        value(None, None, "", max_tokens="refused")
    except TypeError as exc:
        if "max_tokens must be an int" in str(exc):
            return "forwards"
    except Exception:
        pass
    return "original"

bound = {}
for name, module in list(sys.modules.items()):
    if name == "mlx_vlm" or name.startswith("mlx_vlm."):
        for attr in ("generate", "stream_generate"):
            value = getattr(module, attr, None)
            if callable(value) and not isinstance(value, type(sys)):
                bound[name + "." + attr] = kind(value)
print(json.dumps({"status": report.status, "bound": bound,
                  "unreachable": list(report.unreachable)}))
"""

ORDERS = {
    "safe first": "import mlx_vlm_safe\nimport mlx_vlm\n",
    "mlx_vlm first": "import mlx_vlm\nimport mlx_vlm_safe\n",
    "server before safe": "import mlx_vlm.server\nimport mlx_vlm_safe\n",
    "safe before server": "import mlx_vlm_safe\nimport mlx_vlm.server\n",
    "safe, mlx_vlm, then server": (
        "import mlx_vlm_safe\nimport mlx_vlm\nimport mlx_vlm.server\n"
    ),
}


def _server_expected(release: Expected) -> bool:
    """Whether the table says ``import mlx_vlm.server`` works here."""
    if release.server == "absent":
        return False
    return not (release.has("server_needs_py312") and sys.version_info < (3, 12))


@pytest.fixture(scope="module")
def server_importable(release: Expected) -> bool:
    """Whether this release's server imports here, checked against the table."""
    result = run_python("import mlx_vlm.server")
    assert (result.returncode == 0) == _server_expected(release), result.stderr
    return result.returncode == 0


@pytest.mark.subprocess
@pytest.mark.parametrize("prologue", ORDERS.values(), ids=ORDERS.keys())
def test_every_import_order_ends_fully_patched(
    prologue: str, server_importable: bool
) -> None:
    """Whatever was imported first, every copy of generate is ours afterwards.

    Where the release has no importable server (the table says which), the
    server import is replaced by a plain ``import mlx_vlm``.
    """
    if "server" in prologue and not server_importable:
        prologue = prologue.replace("import mlx_vlm.server\n", "import mlx_vlm\n")
    result = run_python(prologue + _CHECK)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["status"] == "patched"
    assert data["bound"], "no mlx_vlm module binds generate?"
    assert "original" not in data["bound"].values(), data["bound"]
    if "server" in prologue:
        server = {k: v for k, v in data["bound"].items() if ".server" in k}
        assert server, "the server binds no generate?"


@pytest.mark.subprocess
def test_references_captured_before_the_patch_are_named() -> None:
    """``from mlx_vlm import generate`` before the import: named in the report."""
    result = run_python("from mlx_vlm import generate\n" + _CHECK)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert "__main__.generate" in data["unreachable"]


@pytest.mark.subprocess
def test_import_is_light_and_defers_everything() -> None:
    """``import mlx_vlm_safe`` imports neither mlx, mlx_vlm, wrapt nor logging."""
    result = run_python(
        "import sys\n"
        "before = set(sys.modules)\n"
        "import mlx_vlm_safe\n"
        "new = sorted(m.split('.')[0] for m in set(sys.modules) - before)\n"
        "print(' '.join(sorted(set(new))))\n"
        "print(mlx_vlm_safe.report(inventory=False).status)\n"
    )
    assert result.returncode == 0, result.stderr
    imported, status = result.stdout.strip().splitlines()[-2:]
    heavy = {"mlx", "mlx_vlm", "wrapt", "packaging", "logging", "typing", "inspect"}
    assert "mlx_vlm_safe" in imported.split()
    assert not heavy & set(imported.split()), imported
    assert status == "pending"


@pytest.mark.subprocess
@pytest.mark.parametrize("value", ["1", "true", "YES", "on"])
def test_kill_switch_turns_the_import_into_a_no_op(value: str) -> None:
    """MLX_VLM_SAFE_DISABLE=1: nothing is patched, now or on import."""
    result = run_python(
        "import mlx_vlm_safe, mlx_vlm\n"
        "print(mlx_vlm_safe.report().status, "
        "getattr(mlx_vlm.generate, '__mlx_vlm_safe__', False))\n",
        env={"MLX_VLM_SAFE_DISABLE": value},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == ["disabled", "False"]


@pytest.mark.subprocess
def test_malformed_kill_switch_warns_once_and_stays_off() -> None:
    """A typo in the variable: one clear warning naming it, no crash, no patch."""
    result = run_python(
        "import logging; logging.basicConfig()\n"
        "import mlx_vlm_safe, mlx_vlm\n"
        "print(mlx_vlm_safe.report().status)\n"
        "try:\n    mlx_vlm_safe.patch()\n"
        "except ValueError as exc:\n    print('explicit:', exc)\n",
        env={"MLX_VLM_SAFE_DISABLE": "ture"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("MLX_VLM_SAFE_DISABLE='ture'") == 1
    assert "disabled" in result.stdout
    assert "explicit: MLX_VLM_SAFE_DISABLE='ture' is not a boolean" in result.stdout


@pytest.mark.subprocess
def test_without_mlx_vlm_import_is_harmless_and_strict_patch_raises() -> None:
    """No mlx-vlm: the import does nothing; patch() says so; strict raises."""
    result = run_python(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'mlx_vlm' or name.startswith('mlx_vlm.'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import mlx_vlm_safe\n"
        "print(mlx_vlm_safe.patch().status)\n"
        "try:\n    mlx_vlm_safe.patch(strict=True)\n"
        "except mlx_vlm_safe.PatchError as exc:\n    print('strict:', exc)\n"
    )
    assert result.returncode == 0, result.stderr
    assert "not-installed" in result.stdout
    assert "strict: mlx-vlm cannot be imported" in result.stdout


@pytest.mark.subprocess
def test_hook_keeps_the_real_loader_and_resources() -> None:
    """Modules loaded through our hook still have their real loader."""
    result = run_python(
        "import mlx_vlm_safe, mlx_vlm, importlib.resources\n"
        "print(type(mlx_vlm.__loader__).__name__,"
        " type(mlx_vlm.__spec__.loader).__name__)\n"
        "print(importlib.resources.files('mlx_vlm').joinpath('__init__.py').is_file())\n"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    assert lines[-3:] == ["SourceFileLoader", "SourceFileLoader", "True"]
