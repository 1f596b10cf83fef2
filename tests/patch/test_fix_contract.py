"""The contract every fix keeps, checked over ``FIXES`` on the real release.

Like ddtrace's patch test base, one set of tests for every fix rather than a
hand-written set per fix. Each environment runs it for the fixes its release
calls for (read from the release table, ``tools/matrix.py``, not from the
patch under test): the patch names the fix in ``report()`` with its reason
and targets; patching again changes nothing; ``unpatch()`` puts back the
very objects it replaced; patching again wraps those same originals, never
a wrapper; and, switched off (``_patch.switched_off``), the fix's own
symptom comes back on the real release and tiny checkpoint, while it passes
with the fix on. The symptom checks are the fixes' own tests
(``test_fixes.py``, ``test_utf8.py``, ``test_threads.py``,
``test_caller_kwargs.py``), named in
:data:`SYMPTOMS`; a fix without one fails here. The fixes the release does
not call for are checked to be left out.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from typing import Any

import pytest

import mlx_vlm_safe
from mlx_vlm_safe._patch import FIXES, switched_off
from tools.matrix import Expected, expected_release, streams_bound

from ..conftest import MATRIX_ENV, Tiny
from .test_caller_kwargs import check_max_tokens_is_honoured
from .test_fixes import (
    check_empty_stream_gives_an_empty_result,
    check_errors_reach_the_caller,
    check_generate_retries_a_failure_mid_answer,
    check_generation_runs,
    check_stream_end_is_recorded,
)
from .test_threads import (
    check_a_call_inside_another_keeps_its_text,
    check_generate_on_another_thread,
    check_steps_never_overlap,
)
from .test_utf8 import check_lone_byte_is_replaced

pytestmark = pytest.mark.model

SPECS = {spec.name: spec for spec in FIXES}


@dataclasses.dataclass(frozen=True)
class Subject:
    """What a symptom check runs on: the real release and the tiny model."""

    tiny: Tiny
    mlx_vlm: Any
    exports: Any
    release: Expected


#: Each fix's own symptom: passes with the fix in place, raises without it.
SYMPTOMS: dict[str, Callable[[Subject], None]] = {
    "thread_local_stream": lambda s: check_generate_on_another_thread(
        s.tiny, s.mlx_vlm
    ),
    "propagate_errors": lambda s: check_errors_reach_the_caller(s.tiny, s.mlx_vlm),
    "generate_off_metal": lambda s: check_generation_runs(s.tiny, s.mlx_vlm, s.release),
    "never_empty_stream": lambda s: check_empty_stream_gives_an_empty_result(
        s.tiny, s.mlx_vlm
    ),
    "observed_stream": lambda s: check_stream_end_is_recorded(
        s.tiny, s.exports, s.release
    ),
    "none_safe_generate": lambda s: check_generate_retries_a_failure_mid_answer(
        s.tiny, s.mlx_vlm
    ),
    "replace_invalid_utf8": lambda s: check_lone_byte_is_replaced(s.tiny),
    "private_detokenizer": lambda s: check_a_call_inside_another_keeps_its_text(
        s.tiny, s.exports
    ),
    "serialized_steps": lambda s: check_steps_never_overlap(s.tiny, s.exports),
    "pass_caller_kwargs": lambda s: check_max_tokens_is_honoured(s.tiny, s.mlx_vlm),
}


def _expected_fixes() -> tuple[str, ...]:
    """The fixes the release table calls for here (as the ``release`` fixture)."""
    import mlx.core as mx
    import mlx_vlm

    row = expected_release(mlx_vlm.__version__, os.environ.get(MATRIX_ENV))
    assert row is not None, f"mlx-vlm {mlx_vlm.__version__} is not in the table"
    return row.fixes_on(streams_bound(mx.__version__))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize by fix: the ones this release calls for, and the others."""
    applied = _expected_fixes()
    if "fix" in metafunc.fixturenames:
        metafunc.parametrize("fix", applied)
    if "left_out" in metafunc.fixturenames:
        metafunc.parametrize("left_out", [n for n in SPECS if n not in applied])


@pytest.fixture
def subject(tiny: Tiny, mlx_vlm: Any, exports: Any, release: Expected) -> Subject:
    return Subject(tiny, mlx_vlm, exports, release)


def _resolve(target: str) -> object:
    """The object bound at ``module.attribute`` (or ``module.Class.method``)."""
    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        found: object = sys.modules.get(".".join(parts[:cut]))
        if found is None:
            continue
        for name in parts[cut:]:
            found = (
                vars(found)[name] if isinstance(found, type) else getattr(found, name)
            )
        return found
    raise LookupError(target)


def _ours(obj: object) -> bool:
    return bool(getattr(obj, "__mlx_vlm_safe__", False))


def _bound(targets: tuple[str, ...]) -> dict[str, object]:
    return {target: _resolve(target) for target in targets}


def _named(fix: str) -> mlx_vlm_safe.Fix:
    found = [f for f in mlx_vlm_safe.report().fixes if f.name == fix]
    assert len(found) == 1, f"{fix} is not in the report once"
    return found[0]


def test_every_fix_has_its_symptom_check() -> None:
    assert set(SYMPTOMS) == set(SPECS)


def test_the_fix_is_named_in_the_report_with_its_reason_and_targets(fix: str) -> None:
    named = _named(fix)
    assert named.reason == SPECS[fix].reason
    assert named.targets, f"{fix} shows nowhere it acts"


def test_patch_unpatch_and_repatch_restore_the_originals_by_identity(
    fix: str,
) -> None:
    targets = _named(fix).targets
    patched = _bound(targets)
    for obj in patched.values():  # a wrapper of ours wraps an original
        assert not (_ours(obj) and _ours(getattr(obj, "__wrapped__", None)))
    mlx_vlm_safe.patch()  # again: nothing changes
    assert all(_resolve(t) is obj for t, obj in patched.items())

    mlx_vlm_safe.unpatch()
    assert fix not in mlx_vlm_safe.report().fix_names()
    originals = _bound(targets)
    for target, original in originals.items():
        assert original is not patched[target], target
        assert not _ours(original), target
        if _ours(patched[target]):
            assert patched[target].__wrapped__ is original, target  # type: ignore[attr-defined]

    mlx_vlm_safe.patch()
    assert _named(fix).targets == targets
    for target, again in _bound(targets).items():
        assert again is not originals[target], target
        if _ours(again):  # one layer around the original: no double wrapping
            assert again.__wrapped__ is originals[target], target  # type: ignore[attr-defined]

    mlx_vlm_safe.unpatch()
    assert all(_resolve(t) is obj for t, obj in originals.items())
    mlx_vlm_safe.patch()


def test_switched_off_its_own_symptom_comes_back(fix: str, subject: Subject) -> None:
    check = SYMPTOMS[fix]
    check(subject)  # the fix in place: no symptom
    with switched_off(fix):
        assert mlx_vlm_safe.is_patched()
        assert fix not in mlx_vlm_safe.report().fix_names()
        with pytest.raises((AssertionError, Exception, pytest.fail.Exception)) as info:
            check(subject)
        print(f"{fix} switched off: {info.value!r}"[:300])  # what came back, with -s
    assert fix in mlx_vlm_safe.report().fix_names()
    check(subject)  # back on: no symptom again


def test_switching_off_a_name_that_is_no_fix_is_an_error() -> None:
    with (
        pytest.raises(ValueError, match="no such fix: propagate_erors"),
        switched_off("propagate_erors"),
    ):
        pass


def test_a_fix_the_probes_do_not_call_for_is_left_out(left_out: str) -> None:
    report = mlx_vlm_safe.report()
    verdicts = {p.name: p.outcome for p in report.probes}
    assert not SPECS[left_out].applies(verdicts)
    assert left_out not in report.fix_names()
