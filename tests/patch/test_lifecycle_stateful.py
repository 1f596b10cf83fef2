"""The lifecycle as a state machine: imports, patch, unpatch, kill switch, threads.

Hypothesis builds a *program*: a sequence of steps (import mlx_vlm, import
mlx_vlm.server, ``from mlx_vlm import generate`` captured early, import
mlx_vlm_safe, patch, unpatch, the kill switch on/off, real generations with
planted faults through each reference, a generation on a worker thread,
threads patching and unpatching while the main thread generates). The machine
keeps a model of what the library promises after each step. Import order is
the point, so at the end of each example one fresh interpreter runs the
program (``_lifecycle_runner.py``) and reports, after every step, the status
and the invariant violations it saw; the teardown compares them with the
model:

* never two layers of our wrapper; while patched no ``mlx_vlm*`` module still
  holds a replaced original; while not patched none holds our wrapper, so
  after ``unpatch()`` every replaced object is the original by identity;
* ``is_patched()`` is what the model predicts from the steps so far;
* every call made while patched succeeds in full or raises the real error
  (the planted object), never ``AttributeError: 'NoneType' ...``.

Generation runs on the thread that imported mlx_vlm: mlx streams are
thread-local (0.3.5's ``generation_stream`` is a plain ``mx.new_stream``, so
another thread gets ``RuntimeError: There is no Stream(cpu, 0) in current
thread``; 0.6+ use a thread-local stream). A worker-thread call must still end
in success or a real error, never the ``None`` defect.

CI bound: ``MAX_EXAMPLES`` programs of at most ``MAX_STEPS`` steps, each one
interpreter start with ``import mlx_vlm`` (2-5 s on a loaded 2-core machine),
so about 60-90 s per release here (< 3 minutes), failing or not (no
shrinking: a failure prints the whole program).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from mlx_vlm_safe.testing import build_tiny_checkpoint, tiny_image_path, tiny_prompt
from tools.matrix import expected_release

pytestmark = [pytest.mark.subprocess, pytest.mark.model]

MAX_EXAMPLES = 12
MAX_STEPS = 10
RUNNER = pathlib.Path(__file__).with_name("_lifecycle_runner.py")
REPO = RUNNER.parents[2]
FAULTS = ("none", "error0", "error_k", "prefill", "interrupt", "empty")
VIAS = ("attr", "stream", "captured", "server")
THREAD_OPS = ("patch", "unpatch", "report", "is_patched")

#: The machine found three core bugs (fixed; each keeps a named test below):
#: B1 a module imported while patched kept our wrapper after unpatch(); B2/B3
#: patch() under the kill switch left wrappers in place / the hook armed.


class Context:
    """What every program needs: the tiny model's files and the prompt."""

    spec: dict[str, Any] | None = None
    server_importable = False


CONTEXT = Context()


def _run_program(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    assert CONTEXT.spec is not None
    spec_file = pathlib.Path(CONTEXT.spec["dir"]) / "program.json"
    spec_file.write_text(json.dumps({**CONTEXT.spec, "steps": steps}))
    env = {k: v for k, v in os.environ.items() if k != "MLX_VLM_SAFE_DISABLE"}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), env.get("PYTHONPATH", "")) if p
    )
    done = subprocess.run(
        [sys.executable, str(RUNNER), str(spec_file)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"runner crashed:\n{done.stderr[-3000:]}"
    observations: list[dict[str, Any]] = json.loads(done.stdout.splitlines()[-1])
    return observations


class Lifecycle(RuleBasedStateMachine):
    """A model of the promises, and the program that tests them."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[dict[str, Any]] = []
        # What the model predicts after each step: patched True/False, or
        # None where concurrent patch/unpatch make the end state a race.
        self.predicted: list[bool | None] = []
        self.safe = self.vlm = self.server = self.captured = False
        self.kill = self.armed = False
        self.patched: bool | None = False

    # ------------------------------------------------------------ transitions

    def _add(self, step: dict[str, Any]) -> None:
        self.steps.append(step)
        self.predicted.append(self.patched)

    def _import_safe(self) -> None:
        if self.safe:
            return
        self.safe = True
        if self.kill:
            return  # the kill switch at import time: nothing happens
        if self.vlm:
            self.patched = True
        else:
            self.armed = True

    def _import_vlm(self) -> None:
        if self.vlm:
            return
        self.vlm = True
        if self.armed:
            self.patched, self.armed = True, False

    @precondition(lambda self: not self.vlm)
    @rule()
    def import_mlx_vlm(self) -> None:
        self._import_vlm()
        self._add({"op": "import_vlm"})

    @precondition(lambda self: not self.server and CONTEXT.server_importable)
    @rule()
    def import_server(self) -> None:
        self._import_vlm()
        self.server = True
        self._add({"op": "import_server"})

    @precondition(lambda self: not self.captured)
    @rule()
    def capture_generate_early(self) -> None:
        self._import_vlm()
        self.captured = True
        self._add({"op": "capture"})

    @precondition(lambda self: not self.safe)
    @rule()
    def import_mlx_vlm_safe(self) -> None:
        self._import_safe()
        self._add({"op": "import_safe"})

    @rule()
    def patch(self) -> None:
        self._import_safe()
        if self.kill:
            self.patched, self.armed = False, False  # "disabled"
        else:
            self.vlm, self.armed, self.patched = True, False, True
        self._add({"op": "patch"})

    @rule()
    def unpatch(self) -> None:
        self._import_safe()
        self.patched, self.armed = False, False
        self._add({"op": "unpatch"})

    @precondition(lambda self: not self.kill)
    @rule()
    def kill_switch_on(self) -> None:
        self.kill = True
        self._add({"op": "kill_on"})

    @precondition(lambda self: self.kill)
    @rule()
    def kill_switch_off(self) -> None:
        self.kill = False
        self._add({"op": "kill_off"})

    @precondition(lambda self: self.vlm)
    @rule(via=st.sampled_from(VIAS), fault=st.sampled_from(FAULTS))
    def call(self, via: str, fault: str) -> None:
        if via == "captured" and not self.captured:
            via = "attr"
        if via == "server" and not self.server:
            via = "stream"
        if not self.safe:
            fault = "none"  # the kit is part of mlx_vlm_safe: importing it would
            # change the import order under test
        self._add({"op": "call", "via": via, "fault": fault})

    @precondition(lambda self: self.vlm and self.safe)
    @rule(fault=st.sampled_from(("none", "error0", "interrupt")))
    def call_from_another_thread(self, fault: str) -> None:
        self._add({"op": "thread_call", "fault": fault})

    @precondition(lambda self: self.vlm and self.safe and not self.kill)
    @rule(ops=st.lists(st.sampled_from(THREAD_OPS), min_size=2, max_size=4))
    def threads_patch_while_generating(self, ops: list[str]) -> None:
        changes = {op for op in ops if op in ("patch", "unpatch")}
        if changes == {"patch"}:
            self.patched, self.armed = True, False
        elif changes == {"unpatch"}:
            self.patched, self.armed = False, False
        elif changes:
            self.patched, self.armed = None, False  # a race: either end state
        self._add({"op": "threads", "ops": ops})

    # ------------------------------------------------------------ the check

    def teardown(self) -> None:
        if not self.steps:
            return
        observations = _run_program(self.steps)
        listing = "\n".join(
            f"  {i}: {json.dumps(step)}" for i, step in enumerate(self.steps)
        )
        for seen, predicted in zip(observations, self.predicted, strict=True):
            where = f"after step {seen['step']} ({seen['op']}) of:\n{listing}\n"
            assert "raised" not in seen, where + f"the step raised {seen['raised']}"
            violations = seen["violations"]
            assert not violations, where + "\n".join(violations)
            if predicted is not None:
                assert seen["patched"] == predicted, (
                    where + f"is_patched() is {seen['patched']}, the model says "
                    f"{predicted} (status {seen['status']})"
                )
            for outcome in seen["calls"]:
                _check_call(outcome, seen["patched"], where)


def _made(max_tokens: int) -> int:
    """Tokens a call asking for ``max_tokens`` makes here (0.1.7-0.1.9: 256)."""
    import mlx_vlm

    row = expected_release(
        mlx_vlm.__version__, os.environ.get("MLX_VLM_SAFE_MATRIX_ENV")
    )
    return row.tokens_for(max_tokens) if row is not None else max_tokens


def _check_call(outcome: dict[str, Any], patched: bool, where: str) -> None:
    """While patched: a full answer, or the real (planted) error."""
    assert "thread_error" not in outcome, where + outcome.get("thread_error", "")
    if not patched:
        return  # the release as it ships; its own suite covers that
    detail = where + json.dumps(outcome)
    assert not outcome.get("none_defect"), detail
    fault = outcome["fault"]
    if outcome["ok"]:
        assert fault in ("none", "empty"), "a planted fault was lost: " + detail
        assert not outcome["none"], detail
        if fault == "none":
            assert outcome["tokens"] in (_made(3), None), detail
        else:  # empty: an empty result, or a stream of at most one empty item
            assert outcome["text"] in ("", None), detail
            assert outcome["items"] <= 1, detail
    elif outcome["fault"] in ("none", "empty"):
        # Only a worker thread may fail without a planted fault: the
        # release's stream belongs to the importing thread (0.3.x).
        assert "Stream" in outcome["message"], detail
    else:
        assert outcome["planted"] or "Stream" in outcome["message"], detail
        assert outcome["frames"] > 0, detail


@pytest.fixture(scope="module", autouse=True)
def _context(tmp_path_factory: pytest.TempPathFactory, tiny: Any) -> None:
    """Build the checkpoint once; programs only load it."""
    root = tmp_path_factory.mktemp("lifecycle")
    CONTEXT.spec = {
        "dir": str(root),
        "checkpoint": str(build_tiny_checkpoint(root / "checkpoint")),
        "image": str(tiny_image_path(root)),
        "prompt": tiny_prompt(tiny.processor, tiny.model.config, "Describe it."),
    }
    probe = subprocess.run(
        [sys.executable, "-c", "import mlx_vlm.server"],
        capture_output=True,
        timeout=300,
        check=False,
    )
    CONTEXT.server_importable = probe.returncode == 0


# ----------------------- fixed programs: every call kind, the bugs it found


def _last(steps: list[dict[str, Any]]) -> dict[str, Any]:
    return _run_program(steps)[-1]


def test_every_kind_of_call_while_patched() -> None:
    """Each reference x each fault once, in one program: the checks every run."""
    server = CONTEXT.server_importable
    vias = [v for v in VIAS if server or v != "server"]
    steps: list[dict[str, Any]] = [{"op": "capture"}]
    steps += [{"op": "import_server"}] if server else []
    steps += [{"op": "import_safe"}]
    steps += [{"op": "call", "via": v, "fault": f} for v in vias for f in FAULTS]
    steps += [{"op": "thread_call", "fault": f} for f in ("none", "error0")]
    calls = [(s, c) for s in _run_program(steps) for c in s["calls"]]
    assert len(calls) == len(vias) * len(FAULTS) + 2
    for step, outcome in calls:
        assert step["patched"] is True, step
        assert not step["violations"], step
        _check_call(outcome, True, f"{step['op']}: ")


def test_unpatch_restores_a_module_imported_after_the_patch() -> None:
    """patch(); import mlx_vlm.server; unpatch(): the server holds the originals."""
    if not CONTEXT.server_importable:
        pytest.skip("mlx_vlm.server does not import on this release and Python")
    seen = _last([{"op": "patch"}, {"op": "import_server"}, {"op": "unpatch"}])
    assert seen["patched"] is False
    assert seen["violations"] == []


def test_patch_under_the_kill_switch_leaves_no_wrapper_behind() -> None:
    """patch(); kill switch on; patch(); off; patch(); unpatch(): originals."""
    seen = _run_program(
        [
            {"op": "patch"},
            {"op": "kill_on"},
            {"op": "patch"},
            {"op": "kill_off"},
            {"op": "patch"},
            {"op": "unpatch"},
        ]
    )
    assert [s["patched"] for s in seen] == [True, True, False, False, True, False]
    assert [s["violations"] for s in seen] == [[]] * len(seen)


def test_patch_under_the_kill_switch_disarms_the_pending_import_hook() -> None:
    """import mlx_vlm_safe; kill switch on; patch() -> disabled; import mlx_vlm."""
    seen = _last(
        [
            {"op": "import_safe"},
            {"op": "kill_on"},
            {"op": "patch"},
            {"op": "import_vlm"},
        ]
    )
    assert seen["patched"] is False, seen


Lifecycle.TestCase.settings = settings(
    max_examples=MAX_EXAMPLES,
    stateful_step_count=MAX_STEPS,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    # No shrinking: each try costs an interpreter start, so hypothesis would
    # spend its full five minutes; a failure already lists the whole program
    # (at most MAX_STEPS steps), which keeps the CI bound on failure too.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
TestLifecycle = Lifecycle.TestCase
